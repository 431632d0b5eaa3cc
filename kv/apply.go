package kv

import (
	"bytes"
	"errors"
	"fmt"
	"sync"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/protobuf/proto"

	"github.com/datenlord/datenlord-go/meta"
)

// Machine is the KV state machine that meta replicates (meta.KVMachine):
// it applies the write requests (Put, DeleteRange, Txn, Compaction,
// LeaseGrant, LeaseRevoke, encoded as etcd's InternalRaftRequest) to the
// KV keyspace. Apply is deterministic: it depends only on the request and
// the keyspace. Committed wakes the watchers of this node.
type Machine struct {
	mu sync.Mutex
	// changed is closed and replaced after every commit.
	changed chan struct{}
}

var _ meta.KVMachine = (*Machine)(nil)

// NewMachine returns a KV machine for meta.Config.KV.
func NewMachine() *Machine { return &Machine{changed: make(chan struct{})} }

// Committed wakes everyone waiting on Changed.
func (m *Machine) Committed() {
	m.mu.Lock()
	close(m.changed)
	m.changed = make(chan struct{})
	m.mu.Unlock()
}

// Changed returns a channel closed at the next commit.
func (m *Machine) Changed() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.changed
}

// Apply applies one encoded request; see meta.KVMachine.
func (m *Machine) Apply(tx meta.KVTxn, req []byte) ([]byte, error) {
	resp, err := applyRequest(tx, req)
	var ke *kvError
	if errors.As(err, &ke) {
		tx.Discard()
		return []byte{byte(ke.code)}, nil
	}
	if err != nil {
		return nil, err
	}
	b, err := proto.Marshal(resp)
	if err != nil {
		return nil, fmt.Errorf("kv: encode response: %w", err)
	}
	return append([]byte{byte(codeOK)}, b...), nil
}

// decodeRequest decodes a request and checks that it holds exactly one
// write; it never panics.
func decodeRequest(req []byte) (*pb.InternalRaftRequest, error) {
	var r pb.InternalRaftRequest
	if err := proto.Unmarshal(req, &r); err != nil {
		return nil, fail(codeBadRequest)
	}
	n := 0
	for _, set := range []bool{r.Put != nil, r.DeleteRange != nil, r.Txn != nil, r.Compaction != nil, r.LeaseGrant != nil, r.LeaseRevoke != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, fail(codeBadRequest)
	}
	return &r, nil
}

// applyRequest applies a request; a *kvError is a request failure, any
// other error a storage failure.
func applyRequest(tx meta.KVTxn, req []byte) (proto.Message, error) {
	r, err := decodeRequest(req)
	if err != nil {
		return nil, err
	}
	st, err := loadState(tx)
	if err != nil {
		return nil, err
	}
	a := &applier{tx: tx, st: st}
	var resp proto.Message
	switch {
	case r.Put != nil:
		resp, err = a.put(r.Put)
	case r.DeleteRange != nil:
		resp, err = a.deleteRange(r.DeleteRange)
	case r.Txn != nil:
		if err := checkTxn(r.Txn, 0, new(int)); err != nil {
			return nil, err
		}
		resp, err = a.txn(r.Txn)
	case r.Compaction != nil:
		resp, err = a.compact(r.Compaction)
	case r.LeaseGrant != nil:
		resp, err = a.leaseGrant(r.LeaseGrant)
	case r.LeaseRevoke != nil:
		resp, err = a.leaseRevoke(r.LeaseRevoke)
	}
	if err != nil {
		return nil, err
	}
	if err := a.finish(); err != nil {
		return nil, err
	}
	setHeaderRev(resp, int64(a.st.rev))
	return resp, nil
}

// setHeaderRev sets the revision of a response's header (and of nested
// Txn responses).
func setHeaderRev(m proto.Message, rev int64) {
	h := &pb.ResponseHeader{Revision: rev}
	switch r := m.(type) {
	case *pb.PutResponse:
		r.Header = h
	case *pb.DeleteRangeResponse:
		r.Header = h
	case *pb.RangeResponse:
		r.Header = h
	case *pb.TxnResponse:
		r.Header = h
		for _, op := range r.Responses {
			switch x := op.Response.(type) {
			case *pb.ResponseOp_ResponsePut:
				setHeaderRev(x.ResponsePut, rev)
			case *pb.ResponseOp_ResponseDeleteRange:
				setHeaderRev(x.ResponseDeleteRange, rev)
			case *pb.ResponseOp_ResponseRange:
				setHeaderRev(x.ResponseRange, rev)
			case *pb.ResponseOp_ResponseTxn:
				setHeaderRev(x.ResponseTxn, rev)
			}
		}
	case *pb.CompactionResponse:
		r.Header = h
	case *pb.LeaseGrantResponse:
		r.Header = h
	case *pb.LeaseRevokeResponse:
		r.Header = h
	}
}

// applier is one request being applied: every write it makes is at
// revision st.rev+1, taken on the first write.
type applier struct {
	tx    meta.KVTxn
	st    state
	wrote bool
	// base is the revision before the request (reads of a Txn see it).
	nextIdx uint32
}

// writeRev returns the revision of this request's writes.
func (a *applier) writeRev() int64 {
	if !a.wrote {
		a.wrote = true
		a.st.rev++
	}
	return int64(a.st.rev)
}

func (a *applier) event(ev *mvccpb.Event) {
	a.tx.Set(eventKey(uint64(ev.Kv.ModRevision), a.nextIdx), encodeEvent(ev))
	a.nextIdx++
}

// finish prunes old events and writes the state.
func (a *applier) finish() error {
	target := a.st.compactTo
	if a.st.rev > HistoryRevisions && a.st.rev-HistoryRevisions >= a.st.compactRev+pruneEvery {
		// History is pruned automatically every pruneEvery revisions, so
		// that most writes pay for no scan of the event log.
		target = max(target, a.st.rev-HistoryRevisions)
	}
	if target > a.st.compactRev {
		var keys [][]byte
		var last uint64
		errStop := errors.New("stop")
		// Events at or below compactRev are gone but for the rest of a
		// partly pruned revision compactRev: start there, not at the
		// deleted records' tombstones.
		err := a.tx.Scan(eventKey(a.st.compactRev, 0), eventKey(target+1, 0), func(k, _ []byte) error {
			if len(keys) >= prunePerApply {
				return errStop
			}
			keys = append(keys, bytes.Clone(k))
			if len(k) == 13 {
				last = beU64(k[1:])
			}
			return nil
		})
		if err != nil && !errors.Is(err, errStop) {
			return err
		}
		for _, k := range keys {
			a.tx.Delete(k)
		}
		if errors.Is(err, errStop) {
			// Partly pruned: the revision of the last deleted event may
			// have lost some of its events.
			a.st.compactRev = max(a.st.compactRev, last)
		} else {
			a.st.compactRev = target
		}
	}
	a.tx.Set([]byte{pState}, a.st.encode())
	return nil
}

func (a *applier) lease(id int64) (bool, error) {
	_, ok, err := a.tx.Get(leaseKey(id))
	return ok, err
}

func (a *applier) put(req *pb.PutRequest) (*pb.PutResponse, error) {
	if len(req.Key) == 0 {
		return nil, fail(codeEmptyKey)
	}
	prev, err := getKV(a.tx, req.Key)
	if err != nil {
		return nil, err
	}
	val, lease := req.Value, req.Lease
	if req.IgnoreValue || req.IgnoreLease {
		if prev == nil {
			return nil, fail(codeKeyNotFound)
		}
		if req.IgnoreValue {
			if len(req.Value) != 0 {
				return nil, fail(codeValueProvided)
			}
			val = prev.Value
		}
		if req.IgnoreLease {
			if req.Lease != 0 {
				return nil, fail(codeLeaseProvided)
			}
			lease = prev.Lease
		}
	}
	if lease != 0 {
		ok, err := a.lease(lease)
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fail(codeLeaseNotFound)
		}
	}
	rev := a.writeRev()
	kv := &mvccpb.KeyValue{Key: req.Key, Value: val, CreateRevision: rev, ModRevision: rev, Version: 1, Lease: lease}
	if prev != nil {
		kv.CreateRevision = prev.CreateRevision
		kv.Version = prev.Version + 1
		if prev.Lease != 0 && prev.Lease != lease {
			a.tx.Delete(attachKey(prev.Lease, req.Key))
		}
	}
	if lease != 0 {
		a.tx.Set(attachKey(lease, req.Key), nil)
	}
	a.tx.Set(userKey(req.Key), encodeRecord(kv))
	a.event(&mvccpb.Event{Type: mvccpb.PUT, Kv: kv, PrevKv: prev})
	resp := &pb.PutResponse{}
	if req.PrevKv {
		resp.PrevKv = prev
	}
	return resp, nil
}

func (a *applier) deleteRange(req *pb.DeleteRangeRequest) (*pb.DeleteRangeResponse, error) {
	if len(req.Key) == 0 {
		return nil, fail(codeEmptyKey)
	}
	kvs, err := scanKVs(a.tx, req.Key, req.RangeEnd)
	if err != nil {
		return nil, err
	}
	resp := &pb.DeleteRangeResponse{Deleted: int64(len(kvs))}
	for _, prev := range kvs {
		a.deleteKey(prev)
	}
	if req.PrevKv {
		resp.PrevKvs = kvs
	}
	return resp, nil
}

func (a *applier) deleteKey(prev *mvccpb.KeyValue) {
	rev := a.writeRev()
	a.tx.Delete(userKey(prev.Key))
	if prev.Lease != 0 {
		a.tx.Delete(attachKey(prev.Lease, prev.Key))
	}
	a.event(&mvccpb.Event{Type: mvccpb.DELETE, Kv: &mvccpb.KeyValue{Key: prev.Key, ModRevision: rev}, PrevKv: prev})
}

// checkTxn checks a Txn's size and that no branch writes a key twice.
func checkTxn(t *pb.TxnRequest, depth int, ops *int) error {
	if depth > maxTxnDepth {
		return fail(codeTooManyOps)
	}
	*ops += len(t.Compare) + len(t.Success) + len(t.Failure)
	if *ops > maxTxnOps {
		return fail(codeTooManyOps)
	}
	for _, c := range t.Compare {
		if len(c.Key) == 0 {
			return fail(codeEmptyKey)
		}
	}
	for _, branch := range [][]*pb.RequestOp{t.Success, t.Failure} {
		puts := map[string]bool{}
		var dels []*pb.DeleteRangeRequest
		for _, op := range branch {
			switch r := op.Request.(type) {
			case *pb.RequestOp_RequestPut:
				if r.RequestPut == nil {
					return fail(codeBadRequest)
				}
				k := string(r.RequestPut.Key)
				if puts[k] {
					return fail(codeDuplicateKey)
				}
				puts[k] = true
			case *pb.RequestOp_RequestDeleteRange:
				if r.RequestDeleteRange == nil {
					return fail(codeBadRequest)
				}
				dels = append(dels, r.RequestDeleteRange)
			case *pb.RequestOp_RequestRange:
				if r.RequestRange == nil {
					return fail(codeBadRequest)
				}
			case *pb.RequestOp_RequestTxn:
				if r.RequestTxn == nil {
					return fail(codeBadRequest)
				}
				if err := checkTxn(r.RequestTxn, depth+1, ops); err != nil {
					return err
				}
			default:
				return fail(codeBadRequest)
			}
		}
		for k := range puts {
			for _, d := range dels {
				if inRange([]byte(k), d.Key, d.RangeEnd) {
					return fail(codeDuplicateKey)
				}
			}
		}
	}
	return nil
}

// readOnlyTxn reports whether every operation of a Txn, in both branches
// and nested Txns, is a Range: such a Txn changes nothing and is served
// without Raft (Server.readTxn).
func readOnlyTxn(t *pb.TxnRequest) bool {
	for _, branch := range [][]*pb.RequestOp{t.Success, t.Failure} {
		for _, op := range branch {
			switch r := op.Request.(type) {
			case *pb.RequestOp_RequestRange:
			case *pb.RequestOp_RequestTxn:
				if r.RequestTxn == nil || !readOnlyTxn(r.RequestTxn) {
					return false
				}
			default:
				return false
			}
		}
	}
	return true
}

// serializableTxn reports whether every Range of a read-only Txn is
// serializable (and it has at least one), as etcd serves such a Txn
// without a ReadIndex.
func serializableTxn(t *pb.TxnRequest) bool {
	n := 0
	var walk func(t *pb.TxnRequest) bool
	walk = func(t *pb.TxnRequest) bool {
		for _, branch := range [][]*pb.RequestOp{t.Success, t.Failure} {
			for _, op := range branch {
				switch r := op.Request.(type) {
				case *pb.RequestOp_RequestRange:
					if r.RequestRange == nil || !r.RequestRange.Serializable {
						return false
					}
					n++
				case *pb.RequestOp_RequestTxn:
					if r.RequestTxn == nil || !walk(r.RequestTxn) {
						return false
					}
				}
			}
		}
		return true
	}
	return walk(t) && n > 0
}

// roTxn is the KVTxn of a Txn evaluated outside Raft: reads go to
// the reader; a write (there should be none) is dropped and remembered.
type roTxn struct {
	meta.KVReader
	wrote bool
}

func (t *roTxn) Set(k, v []byte) { t.wrote = true }
func (t *roTxn) Delete(k []byte) { t.wrote = true }
func (t *roTxn) Discard()        {}

func (a *applier) txn(t *pb.TxnRequest) (*pb.TxnResponse, error) {
	ok := true
	for _, c := range t.Compare {
		res, err := a.compare(c)
		if err != nil {
			return nil, err
		}
		if !res {
			ok = false
			break
		}
	}
	branch := t.Failure
	if ok {
		branch = t.Success
	}
	resp := &pb.TxnResponse{Succeeded: ok}
	for _, op := range branch {
		var ro *pb.ResponseOp
		switch r := op.Request.(type) {
		case *pb.RequestOp_RequestRange:
			rr, err := rangeKVs(a.tx, a.st, r.RequestRange)
			if err != nil {
				return nil, err
			}
			ro = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseRange{ResponseRange: rr}}
		case *pb.RequestOp_RequestPut:
			pr, err := a.put(r.RequestPut)
			if err != nil {
				return nil, err
			}
			ro = &pb.ResponseOp{Response: &pb.ResponseOp_ResponsePut{ResponsePut: pr}}
		case *pb.RequestOp_RequestDeleteRange:
			dr, err := a.deleteRange(r.RequestDeleteRange)
			if err != nil {
				return nil, err
			}
			ro = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseDeleteRange{ResponseDeleteRange: dr}}
		case *pb.RequestOp_RequestTxn:
			tr, err := a.txn(r.RequestTxn)
			if err != nil {
				return nil, err
			}
			ro = &pb.ResponseOp{Response: &pb.ResponseOp_ResponseTxn{ResponseTxn: tr}}
		default:
			return nil, fail(codeBadRequest)
		}
		resp.Responses = append(resp.Responses, ro)
	}
	return resp, nil
}

// compare evaluates one Txn comparison: over a range, every key must
// satisfy it; a missing single key compares as zero revisions and
// version, and fails a value comparison.
func (a *applier) compare(c *pb.Compare) (bool, error) {
	kvs, err := scanKVs(a.tx, c.Key, c.RangeEnd)
	if err != nil {
		return false, err
	}
	if len(kvs) == 0 {
		if c.Target == pb.Compare_VALUE {
			return false, nil
		}
		return compareKV(c, &mvccpb.KeyValue{}), nil
	}
	for _, kv := range kvs {
		if !compareKV(c, kv) {
			return false, nil
		}
	}
	return true, nil
}

func compareKV(c *pb.Compare, kv *mvccpb.KeyValue) bool {
	var r int
	switch c.Target {
	case pb.Compare_VALUE:
		v, _ := c.TargetUnion.(*pb.Compare_Value)
		if v == nil {
			return false
		}
		r = bytes.Compare(kv.Value, v.Value)
	case pb.Compare_VERSION:
		v, _ := c.TargetUnion.(*pb.Compare_Version)
		if v == nil {
			r = cmpInt(kv.Version, 0)
		} else {
			r = cmpInt(kv.Version, v.Version)
		}
	case pb.Compare_CREATE:
		v, _ := c.TargetUnion.(*pb.Compare_CreateRevision)
		if v == nil {
			r = cmpInt(kv.CreateRevision, 0)
		} else {
			r = cmpInt(kv.CreateRevision, v.CreateRevision)
		}
	case pb.Compare_MOD:
		v, _ := c.TargetUnion.(*pb.Compare_ModRevision)
		if v == nil {
			r = cmpInt(kv.ModRevision, 0)
		} else {
			r = cmpInt(kv.ModRevision, v.ModRevision)
		}
	case pb.Compare_LEASE:
		v, _ := c.TargetUnion.(*pb.Compare_Lease)
		if v == nil {
			r = cmpInt(kv.Lease, 0)
		} else {
			r = cmpInt(kv.Lease, v.Lease)
		}
	default:
		return false
	}
	switch c.Result {
	case pb.Compare_EQUAL:
		return r == 0
	case pb.Compare_NOT_EQUAL:
		return r != 0
	case pb.Compare_GREATER:
		return r > 0
	case pb.Compare_LESS:
		return r < 0
	}
	return false
}

func (a *applier) compact(req *pb.CompactionRequest) (*pb.CompactionResponse, error) {
	switch {
	case req.Revision > int64(a.st.rev):
		return nil, fail(codeFutureRev)
	case req.Revision <= int64(a.st.compactRev) || req.Revision <= int64(a.st.compactTo):
		return nil, fail(codeCompacted)
	}
	a.st.compactTo = uint64(req.Revision)
	return &pb.CompactionResponse{}, nil
}

func (a *applier) leaseGrant(req *pb.LeaseGrantRequest) (*pb.LeaseGrantResponse, error) {
	if req.TTL > maxLeaseTTL {
		return nil, fail(codeLeaseTTLTooLarge)
	}
	id := req.ID
	if id < 0 {
		return nil, fail(codeBadRequest)
	}
	if id == 0 {
		for {
			id = a.st.nextLease
			a.st.nextLease++
			ok, err := a.lease(id)
			if err != nil {
				return nil, err
			}
			if !ok {
				break
			}
		}
	} else if ok, err := a.lease(id); err != nil {
		return nil, err
	} else if ok {
		return nil, fail(codeLeaseExist)
	}
	ttl := max(req.TTL, MinLeaseTTL)
	a.tx.Set(leaseKey(id), beI64(ttl))
	return &pb.LeaseGrantResponse{ID: id, TTL: ttl}, nil
}

func (a *applier) leaseRevoke(req *pb.LeaseRevokeRequest) (*pb.LeaseRevokeResponse, error) {
	ok, err := a.lease(req.ID)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fail(codeLeaseNotFound)
	}
	var keys [][]byte
	p := attachPrefix(req.ID)
	err = a.tx.Scan(p, prefixEnd(p), func(k, _ []byte) error {
		keys = append(keys, bytes.Clone(k[len(p):]))
		return nil
	})
	if err != nil {
		return nil, err
	}
	for _, k := range keys {
		prev, err := getKV(a.tx, k)
		if err != nil {
			return nil, err
		}
		a.tx.Delete(attachKey(req.ID, k))
		if prev != nil && prev.Lease == req.ID {
			a.deleteKey(prev)
		}
	}
	a.tx.Delete(leaseKey(req.ID))
	return &pb.LeaseRevokeResponse{}, nil
}

// prefixEnd is the end of the scan of every key with prefix p.
func prefixEnd(p []byte) []byte {
	e := bytes.Clone(p)
	for i := len(e) - 1; i >= 0; i-- {
		if e[i] < 0xff {
			e[i]++
			return e[:i+1]
		}
	}
	return nil
}

func beU64(b []byte) uint64 {
	return uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
		uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7])
}

func beI64(v int64) []byte {
	b := make([]byte, 8)
	for i := 7; i >= 0; i-- {
		b[i] = byte(v)
		v >>= 8
	}
	return b
}

// decodeResponse decodes a response of Apply into resp (the type that
// matches the request) or returns the request's failure as a gRPC error.
func decodeResponse(b []byte, resp proto.Message) error {
	if len(b) == 0 {
		return fmt.Errorf("kv: empty response")
	}
	if c := errCode(b[0]); c != codeOK {
		return c.grpc()
	}
	if err := proto.Unmarshal(b[1:], resp); err != nil {
		return fmt.Errorf("kv: decode response: %w", err)
	}
	return nil
}
