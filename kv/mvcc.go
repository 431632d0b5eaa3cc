package kv

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sort"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/datenlord/datenlord-go/meta"
)

// Layout of the KV keyspace (keys relative to meta's KV prefix; integers
// big-endian):
//
//	m              -> state: revision, compacted revision, compaction
//	                  target u64, next lease id i64
//	k key          -> key record: create, mod, version, lease u64, value
//	e rev idx      -> event (rev u64, idx u32): type u8, has-prev u8,
//	                  key length uvarint, key, record length uvarint,
//	                  record, previous record
//	l id           -> lease: TTL i64 (seconds, as granted)
//	a id key       -> (empty): key attached to lease id
const (
	pState  = 'm'
	pKey    = 'k'
	pEvent  = 'e'
	pLease  = 'l'
	pAttach = 'a'
)

// HistoryRevisions is how many revisions of events are kept for watches
// and reads at past revisions; older ones are compacted automatically
// (in steps of pruneEvery revisions, so up to pruneEvery more are kept).
const HistoryRevisions = 10000

// prunePerApply bounds the event records one request deletes.
const prunePerApply = 512

// pruneEvery is how many revisions beyond HistoryRevisions accumulate
// before a write prunes them (in one scan of up to prunePerApply events).
const pruneEvery = 64

// Limits of a request, checked deterministically at apply.
const (
	maxTxnOps   = 1024
	maxTxnDepth = 8
	// MinLeaseTTL is the smallest TTL granted, in seconds.
	MinLeaseTTL = 2
	maxLeaseTTL = 9_000_000_000
)

// state is the "m" record.
type state struct {
	rev, compactRev, compactTo uint64
	nextLease                  int64
}

func (s *state) encode() []byte {
	b := make([]byte, 0, 32)
	b = binary.BigEndian.AppendUint64(b, s.rev)
	b = binary.BigEndian.AppendUint64(b, s.compactRev)
	b = binary.BigEndian.AppendUint64(b, s.compactTo)
	return binary.BigEndian.AppendUint64(b, uint64(s.nextLease))
}

// loadState reads the state record; an empty keyspace is at revision 1,
// as etcd starts.
func loadState(r meta.KVReader) (state, error) {
	v, ok, err := r.Get([]byte{pState})
	if err != nil {
		return state{}, err
	}
	if !ok {
		return state{rev: 1, nextLease: 1 << 40}, nil
	}
	if len(v) != 32 {
		return state{}, fmt.Errorf("kv: state record of %d bytes", len(v))
	}
	u := func(i int) uint64 { return binary.BigEndian.Uint64(v[8*i:]) }
	return state{rev: u(0), compactRev: u(1), compactTo: u(2), nextLease: int64(u(3))}, nil
}

func userKey(k []byte) []byte { return append([]byte{pKey}, k...) }

func eventKey(rev uint64, idx uint32) []byte {
	b := binary.BigEndian.AppendUint64([]byte{pEvent}, rev)
	return binary.BigEndian.AppendUint32(b, idx)
}

func leaseKey(id int64) []byte { return binary.BigEndian.AppendUint64([]byte{pLease}, uint64(id)) }

func attachPrefix(id int64) []byte {
	return binary.BigEndian.AppendUint64([]byte{pAttach}, uint64(id))
}

func attachKey(id int64, k []byte) []byte { return append(attachPrefix(id), k...) }

// encodeRecord encodes a key's record (the key itself is not included).
func encodeRecord(kv *mvccpb.KeyValue) []byte {
	b := make([]byte, 0, 32+len(kv.Value))
	b = binary.BigEndian.AppendUint64(b, uint64(kv.CreateRevision))
	b = binary.BigEndian.AppendUint64(b, uint64(kv.ModRevision))
	b = binary.BigEndian.AppendUint64(b, uint64(kv.Version))
	b = binary.BigEndian.AppendUint64(b, uint64(kv.Lease))
	return append(b, kv.Value...)
}

func decodeRecord(key, b []byte) (*mvccpb.KeyValue, error) {
	if len(b) < 32 {
		return nil, fmt.Errorf("kv: record of key %q: %d bytes", key, len(b))
	}
	u := func(i int) int64 { return int64(binary.BigEndian.Uint64(b[8*i:])) }
	return &mvccpb.KeyValue{
		Key: bytes.Clone(key), CreateRevision: u(0), ModRevision: u(1), Version: u(2), Lease: u(3),
		Value: bytes.Clone(b[32:]),
	}, nil
}

func encodeEvent(ev *mvccpb.Event) []byte {
	b := []byte{byte(ev.Type), 0}
	if ev.PrevKv != nil {
		b[1] = 1
	}
	b = binary.AppendUvarint(b, uint64(len(ev.Kv.Key)))
	b = append(b, ev.Kv.Key...)
	rec := encodeRecord(ev.Kv)
	b = binary.AppendUvarint(b, uint64(len(rec)))
	b = append(b, rec...)
	if ev.PrevKv != nil {
		b = append(b, encodeRecord(ev.PrevKv)...)
	}
	return b
}

func decodeEvent(b []byte) (*mvccpb.Event, error) {
	bad := errors.New("kv: malformed event record")
	if len(b) < 2 {
		return nil, bad
	}
	ev := &mvccpb.Event{Type: mvccpb.Event_EventType(b[0])}
	hasPrev := b[1] == 1
	b = b[2:]
	kl, n := binary.Uvarint(b)
	if n <= 0 || kl > uint64(len(b)-n) {
		return nil, bad
	}
	key := b[n : n+int(kl)]
	b = b[n+int(kl):]
	rl, n := binary.Uvarint(b)
	if n <= 0 || rl > uint64(len(b)-n) {
		return nil, bad
	}
	var err error
	if ev.Kv, err = decodeRecord(key, b[n:n+int(rl)]); err != nil {
		return nil, err
	}
	if ev.Type == mvccpb.DELETE {
		ev.Kv = &mvccpb.KeyValue{Key: ev.Kv.Key, ModRevision: ev.Kv.ModRevision}
	}
	if hasPrev {
		if ev.PrevKv, err = decodeRecord(key, b[n+int(rl):]); err != nil {
			return nil, err
		}
	}
	return ev, nil
}

// kvError is a request failure: an etcd error that the client sees. It
// leaves the state unchanged.
type kvError struct{ code errCode }

func (e *kvError) Error() string { return e.code.grpc().Error() }

// errCode numbers the request failures on the wire (response byte 0).
type errCode uint8

const (
	codeOK errCode = iota
	codeBadRequest
	codeEmptyKey
	codeKeyNotFound
	codeValueProvided
	codeLeaseProvided
	codeTooManyOps
	codeDuplicateKey
	codeInvalidSort
	codeCompacted
	codeFutureRev
	codeLeaseNotFound
	codeLeaseExist
	codeLeaseTTLTooLarge
	codeNoMachine
)

func (c errCode) grpc() error {
	switch c {
	case codeEmptyKey:
		return rpctypes.ErrGRPCEmptyKey
	case codeKeyNotFound:
		return rpctypes.ErrGRPCKeyNotFound
	case codeValueProvided:
		return rpctypes.ErrGRPCValueProvided
	case codeLeaseProvided:
		return rpctypes.ErrGRPCLeaseProvided
	case codeTooManyOps:
		return rpctypes.ErrGRPCTooManyOps
	case codeDuplicateKey:
		return rpctypes.ErrGRPCDuplicateKey
	case codeInvalidSort:
		return rpctypes.ErrGRPCInvalidSortOption
	case codeCompacted:
		return rpctypes.ErrGRPCCompacted
	case codeFutureRev:
		return rpctypes.ErrGRPCFutureRev
	case codeLeaseNotFound:
		return rpctypes.ErrGRPCLeaseNotFound
	case codeLeaseExist:
		return rpctypes.ErrGRPCLeaseExist
	case codeLeaseTTLTooLarge:
		return rpctypes.ErrGRPCLeaseTTLTooLarge
	}
	return rpctypes.ErrGRPCInvalidClientAPIVersion // codeBadRequest and unknown codes
}

func fail(c errCode) error { return &kvError{code: c} }

// keyBounds maps etcd's key and range_end to a scan of [lo, hi) over the
// key records ("k" keys; hi nil means to the end of the keys). single is
// set for a one-key request.
func keyBounds(key, end []byte) (lo, hi []byte, single bool) {
	lo = userKey(key)
	switch {
	case len(end) == 0:
		return lo, nil, true
	case len(end) == 1 && end[0] == 0:
		return lo, []byte{pKey + 1}, false
	default:
		return lo, userKey(end), false
	}
}

// inRange reports whether key k is in etcd's range [key, end).
func inRange(k, key, end []byte) bool {
	switch {
	case len(end) == 0:
		return bytes.Equal(k, key)
	case len(end) == 1 && end[0] == 0:
		return bytes.Compare(k, key) >= 0
	default:
		return bytes.Compare(k, key) >= 0 && bytes.Compare(k, end) < 0
	}
}

// getKV reads the record of one key (nil if absent).
func getKV(r meta.KVReader, key []byte) (*mvccpb.KeyValue, error) {
	v, ok, err := r.Get(userKey(key))
	if err != nil || !ok {
		return nil, err
	}
	return decodeRecord(key, v)
}

// scanKVs returns the records of etcd's range [key, end) in key order.
func scanKVs(r meta.KVReader, key, end []byte) ([]*mvccpb.KeyValue, error) {
	lo, hi, single := keyBounds(key, end)
	if single {
		kv, err := getKV(r, key)
		if err != nil || kv == nil {
			return nil, err
		}
		return []*mvccpb.KeyValue{kv}, nil
	}
	if bytes.Compare(lo, hi) >= 0 {
		return nil, nil
	}
	var out []*mvccpb.KeyValue
	err := r.Scan(lo, hi, func(k, v []byte) error {
		kv, err := decodeRecord(k[1:], v)
		if err != nil {
			return err
		}
		out = append(out, kv)
		return nil
	})
	return out, err
}

// scanEvents calls fn for the events of revisions [from, to] in order
// (to 0: all).
func scanEvents(r meta.KVReader, from, to uint64, fn func(rev uint64, ev *mvccpb.Event) error) error {
	var hi []byte
	if to != 0 {
		hi = eventKey(to+1, 0)
	} else {
		hi = []byte{pEvent + 1}
	}
	return r.Scan(eventKey(from, 0), hi, func(k, v []byte) error {
		if len(k) != 13 {
			return fmt.Errorf("kv: event key of %d bytes", len(k))
		}
		ev, err := decodeEvent(v)
		if err != nil {
			return err
		}
		return fn(binary.BigEndian.Uint64(k[1:]), ev)
	})
}

// rangeKVs answers a Range on r (the state at st.rev): at st.rev, or at
// an earlier revision by undoing the events after it.
func rangeKVs(r meta.KVReader, st state, req *pb.RangeRequest) (*pb.RangeResponse, error) {
	if len(req.Key) == 0 {
		return nil, fail(codeEmptyKey)
	}
	if _, ok := pb.RangeRequest_SortOrder_name[int32(req.SortOrder)]; !ok {
		return nil, fail(codeInvalidSort)
	}
	if _, ok := pb.RangeRequest_SortTarget_name[int32(req.SortTarget)]; !ok {
		return nil, fail(codeInvalidSort)
	}
	rev := uint64(st.rev)
	if req.Revision > 0 {
		switch {
		case uint64(req.Revision) > st.rev:
			return nil, fail(codeFutureRev)
		case uint64(req.Revision) < st.compactRev:
			return nil, fail(codeCompacted)
		}
		rev = uint64(req.Revision)
	}
	kvs, err := scanKVs(r, req.Key, req.RangeEnd)
	if err != nil {
		return nil, err
	}
	if rev < st.rev {
		// Undo the events after rev, newest first.
		cur := map[string]*mvccpb.KeyValue{}
		for _, kv := range kvs {
			cur[string(kv.Key)] = kv
		}
		var evs []*mvccpb.Event
		err := scanEvents(r, rev+1, 0, func(_ uint64, ev *mvccpb.Event) error {
			if inRange(ev.Kv.Key, req.Key, req.RangeEnd) {
				evs = append(evs, ev)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		for i := len(evs) - 1; i >= 0; i-- {
			ev := evs[i]
			if ev.PrevKv != nil {
				cur[string(ev.Kv.Key)] = ev.PrevKv
			} else {
				delete(cur, string(ev.Kv.Key))
			}
		}
		kvs = kvs[:0]
		for _, kv := range cur {
			kvs = append(kvs, kv)
		}
		sort.Slice(kvs, func(i, j int) bool { return bytes.Compare(kvs[i].Key, kvs[j].Key) < 0 })
	}
	filtered := kvs[:0]
	for _, kv := range kvs {
		switch {
		case req.MinModRevision > 0 && kv.ModRevision < req.MinModRevision,
			req.MaxModRevision > 0 && kv.ModRevision > req.MaxModRevision,
			req.MinCreateRevision > 0 && kv.CreateRevision < req.MinCreateRevision,
			req.MaxCreateRevision > 0 && kv.CreateRevision > req.MaxCreateRevision:
			continue
		}
		filtered = append(filtered, kv)
	}
	kvs = filtered
	sortKVs(kvs, req.SortOrder, req.SortTarget)
	resp := &pb.RangeResponse{Header: &pb.ResponseHeader{Revision: int64(st.rev)}, Count: int64(len(kvs))}
	if req.Limit > 0 && int64(len(kvs)) > req.Limit {
		kvs = kvs[:req.Limit]
		resp.More = true
	}
	if req.CountOnly {
		return resp, nil
	}
	if req.KeysOnly {
		for _, kv := range kvs {
			kv.Value = nil
		}
	}
	resp.Kvs = kvs
	return resp, nil
}

// sortKVs sorts key-ordered records as a Range asks.
func sortKVs(kvs []*mvccpb.KeyValue, order pb.RangeRequest_SortOrder, target pb.RangeRequest_SortTarget) {
	if order == pb.RangeRequest_NONE {
		if target == pb.RangeRequest_KEY {
			return
		}
		order = pb.RangeRequest_ASCEND
	}
	less := func(a, b *mvccpb.KeyValue) int {
		switch target {
		case pb.RangeRequest_VERSION:
			return cmpInt(a.Version, b.Version)
		case pb.RangeRequest_CREATE:
			return cmpInt(a.CreateRevision, b.CreateRevision)
		case pb.RangeRequest_MOD:
			return cmpInt(a.ModRevision, b.ModRevision)
		case pb.RangeRequest_VALUE:
			return bytes.Compare(a.Value, b.Value)
		}
		return bytes.Compare(a.Key, b.Key)
	}
	sort.SliceStable(kvs, func(i, j int) bool {
		if order == pb.RangeRequest_DESCEND {
			return less(kvs[j], kvs[i]) < 0
		}
		return less(kvs[i], kvs[j]) < 0
	})
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
