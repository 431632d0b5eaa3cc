package meta

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"syscall"

	"github.com/dgraph-io/badger/v4"
)

// The KV extension: a second, independent state machine (package kv, the
// etcd-compatible KV server) replicated by the same Raft group in its own
// keyspace of the state database (keys prefixKV + the machine's key).
//
// A KV command (opKV) carries an opaque request that the machine decodes
// and applies through a KVTxn restricted to its keyspace, in the same
// Badger transaction as the batch it belongs to, so that it shares the
// idempotent apply, the snapshots and the dedup of retried commands. Its
// opaque response travels back like any result: through the ApplyFuture,
// the forwarding answer and the dedup record. The machine must be
// deterministic: it must read neither the clock nor anything but the
// KVTxn (a proposer that needs time puts it in the request), and it must
// answer malformed requests with a response, never a panic.

// OpKVLease is the op code of the KV machine's lease RPCs between nodes
// (keep-alives forwarded to the leader); the meta service does not
// register it, the KV server does.
const OpKVLease uint16 = 0x01f0

// KVMachine is the KV extension's state machine (see Config.KV).
type KVMachine interface {
	// Apply applies one request. It must be deterministic and must not
	// panic on any input; a request it cannot decode gets a response that
	// says so. Writes of a request answered with an error should be
	// avoided or dropped with KVTxn.Discard. An error return means
	// storage failed and stops the state machine.
	Apply(tx KVTxn, req []byte) (resp []byte, err error)
	// Committed is called after a batch with KV commands is committed,
	// and after a snapshot replaced the state, on every node: the time
	// to tell watchers. It runs on the state machine goroutine and must
	// not block.
	Committed()
}

// KVReader reads the KV keyspace. Keys are the machine's own (without
// the meta prefix). Slices passed to callbacks are valid only during the
// call.
type KVReader interface {
	// Get returns the value of key k; ok is false if it does not exist.
	Get(k []byte) (v []byte, ok bool, err error)
	// Scan calls fn for every key in [start, end) in key order (end nil:
	// to the end of the keyspace) until fn returns an error, which Scan
	// returns. fn must not call Scan.
	Scan(start, end []byte, fn func(k, v []byte) error) error
}

// KVTxn is the KV keyspace as one command applies it: reads see the
// command's own writes and those of earlier commands.
type KVTxn interface {
	KVReader
	// Set sets key k to v (both are retained; do not modify them).
	Set(k, v []byte)
	// Delete deletes key k.
	Delete(k []byte)
	// Discard drops every write of this command so far.
	Discard()
}

func kvKey(k []byte) []byte {
	b := make([]byte, 0, 1+len(k))
	return append(append(b, prefixKV), k...)
}

// kvEnd is the end of the scan range of [start, end) in the meta keyspace.
func kvEnd(end []byte) []byte {
	if end == nil {
		return []byte{prefixKV + 1}
	}
	return kvKey(end)
}

// applyKV runs a KV command through the configured machine.
func (a *applyCtx) applyKV(c *command) ([]byte, error) {
	m := a.f.kv
	if m == nil {
		return nil, syscall.ENOSYS
	}
	a.kvApplied = true
	tx := &kvTxn{a: a}
	return m.Apply(tx, c.Value)
}

// kvTxn is the KVTxn of one command: an overlay of the command's pending
// writes (applyCtx.writes) on the batch's Badger transaction.
type kvTxn struct{ a *applyCtx }

func (t *kvTxn) Get(k []byte) ([]byte, bool, error) {
	v, ok, err := t.a.get(kvKey(k))
	if err != nil {
		return nil, false, fmt.Errorf("meta: kv get: %w", err)
	}
	return v, ok, nil
}

func (t *kvTxn) Set(k, v []byte) {
	if v == nil {
		v = []byte{}
	}
	t.a.set(kvKey(k), v)
}

func (t *kvTxn) Delete(k []byte) { t.a.del(kvKey(k)) }

func (t *kvTxn) Discard() {
	for k := range t.a.writes {
		if len(k) > 0 && k[0] == prefixKV {
			delete(t.a.writes, k)
		}
	}
}

func (t *kvTxn) Scan(start, end []byte, fn func(k, v []byte) error) error {
	lo, hi := kvKey(start), kvEnd(end)
	// The command's pending writes in range, sorted, merged with the
	// transaction's iterator.
	var pend []string
	for k := range t.a.writes {
		if k >= string(lo) && k < string(hi) {
			pend = append(pend, k)
		}
	}
	sort.Strings(pend)
	// Values are read only for keys in range (no prefetch: a bounded
	// scan must not read ahead past its end), and the iterator is
	// limited to the range's common prefix so that tables outside it
	// are skipped.
	opts := badger.DefaultIteratorOptions
	opts.PrefetchValues = false
	opts.Prefix = commonPrefix(lo, hi)
	it := t.a.txn.NewIterator(opts)
	defer it.Close()
	emitPending := func(k string) error {
		w := t.a.writes[k]
		if w.del {
			return nil
		}
		return fn([]byte(k[1:]), w.val)
	}
	it.Seek(lo)
	for {
		var ik []byte
		if it.Valid() {
			ik = it.Item().Key()
			if bytes.Compare(ik, hi) >= 0 {
				ik = nil
			}
		}
		if ik == nil {
			for _, k := range pend {
				if err := emitPending(k); err != nil {
					return err
				}
			}
			return nil
		}
		for len(pend) > 0 && pend[0] < string(ik) {
			if err := emitPending(pend[0]); err != nil {
				return err
			}
			pend = pend[1:]
		}
		if len(pend) > 0 && pend[0] == string(ik) {
			if err := emitPending(pend[0]); err != nil {
				return err
			}
			pend = pend[1:]
		} else {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return fmt.Errorf("meta: kv scan: %w", err)
			}
			if err := fn(bytes.Clone(ik[1:]), v); err != nil {
				return err
			}
		}
		it.Next()
	}
}

// commonPrefix returns the iterator prefix of the KV scan [lo, hi) (lo
// from kvKey, hi from kvEnd): their longest common prefix, which every
// key in the range has, and at least prefixKV.
func commonPrefix(lo, hi []byte) []byte {
	n := 0
	for n < len(lo) && n < len(hi) && lo[n] == hi[n] {
		n++
	}
	n = max(n, 1) // lo starts with prefixKV
	return lo[:n:n]
}

// kvView is the KVReader of a read-only transaction.
type kvView struct{ txn *badger.Txn }

func (r kvView) Get(k []byte) ([]byte, bool, error) {
	item, err := r.txn.Get(kvKey(k))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("meta: kv get: %w", err)
	}
	v, err := item.ValueCopy(nil)
	if err != nil {
		return nil, false, fmt.Errorf("meta: kv get: %w", err)
	}
	return v, true, nil
}

func (r kvView) Scan(start, end []byte, fn func(k, v []byte) error) error {
	lo, hi := kvKey(start), kvEnd(end)
	opts := badger.DefaultIteratorOptions
	opts.Prefix = commonPrefix(lo, hi)
	it := r.txn.NewIterator(opts)
	defer it.Close()
	for it.Seek(lo); it.Valid(); it.Next() {
		item := it.Item()
		k := item.Key()
		if bytes.Compare(k, hi) >= 0 {
			return nil
		}
		err := item.Value(func(v []byte) error { return fn(k[1:], v) })
		if err != nil {
			return err
		}
	}
	return nil
}

// errNoKV is returned by ApplyKV and ViewKV without Config.KV.
var errNoKV = errors.New("meta: no KV machine configured")

// ApplyKV proposes a KV request through Raft (forwarded to the leader and
// retried with dedup like every command; see doc.go) and returns the
// machine's response. If ctx ends first the request may still be applied.
func (s *Service) ApplyKV(ctx context.Context, req []byte) ([]byte, error) {
	if s.cfg.KV == nil {
		return nil, errNoKV
	}
	res, err := s.apply(ctx, &command{Op: opKV, Value: req})
	if err != nil {
		return nil, err
	}
	return res.data, nil
}

// ViewKV runs fn on the KV keyspace. With linearizable set the read
// reflects every write acknowledged before the call (ReadIndex in a
// cluster); otherwise it reads this node's state as applied so far.
func (s *Service) ViewKV(ctx context.Context, linearizable bool, fn func(r KVReader) error) error {
	if s.cfg.KV == nil {
		return errNoKV
	}
	return s.viewAs(ctx, linearizable, func(txn *badger.Txn) error { return fn(kvView{txn: txn}) })
}

// KVMachine returns Config.KV.
func (s *Service) KVMachine() KVMachine { return s.cfg.KV }

// NodeID returns this node's id.
func (s *Service) NodeID() string { return s.cfg.NodeID }

// LeaderAddr returns the current leader's node address ("" if unknown;
// this node's own transport address if it leads).
func (s *Service) LeaderAddr() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed || s.raft == nil {
		return ""
	}
	return s.leaderAddr()
}

// Term returns the current Raft term.
func (s *Service) Term() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed || s.raft == nil {
		return 0
	}
	return s.raft.CurrentTerm()
}

// LeaderID returns the current leader's node id ("" if unknown).
func (s *Service) LeaderID() string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed || s.raft == nil {
		return ""
	}
	_, id := s.raft.LeaderWithID()
	return string(id)
}
