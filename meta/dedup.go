package meta

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"syscall"

	"github.com/dgraph-io/badger/v4"
)

// Exactly-once commands.
//
// A follower forwards a command to the leader; if the leader fails or the
// connection breaks before the answer arrives, the outcome is unknown and
// the follower must retry, possibly through a new leader. So that a retry
// cannot apply a command twice (a create retried after its own success
// would fail with EEXIST), every command proposed in a cluster carries an
// id (Origin node id, Seq) and the state machine keeps, in the same
// transaction as the command's effects, a record of the id with its result:
//
//	r origin 0x00 seq      -> applied index u64, result (JSON)
//	e index origin 0x00 seq -> (empty): the expiry queue, oldest first
//
// A command whose id is on record changes nothing but the applied index
// and returns the recorded result. The table is replicated and snapshotted
// like everything else, so it survives leader changes. Records expire
// dedupWindow indexes after they were written; a retry is always much
// younger than that (retries give up after Config.RetryTimeout).
//
// Seq starts at the proposing process's start time in nanoseconds, so ids
// stay unique across restarts of a node without any stored counter.

// dedupWindow is how many log indexes a command id is remembered.
const dedupWindow = 1 << 18

// dedupPrunePerBatch bounds the expired records one batch deletes.
const dedupPrunePerBatch = 256

func commandID(origin string, seq uint64) []byte {
	b := make([]byte, 0, len(origin)+9)
	b = append(b, origin...)
	b = append(b, 0)
	return binary.BigEndian.AppendUint64(b, seq)
}

func dedupKey(origin string, seq uint64) []byte {
	return append([]byte{prefixDedup}, commandID(origin, seq)...)
}

func expiryKey(index uint64, origin string, seq uint64) []byte {
	return append(u64Key(prefixExpiry, index), commandID(origin, seq)...)
}

// wireResult is an applyResult as it travels to a forwarding node and as
// the dedup table stores it.
type wireResult struct {
	Attr  Attr   `json:"a"`
	Attr2 Attr   `json:"a2"`
	Ino   Ino    `json:"i,omitempty"`
	N     uint64 `json:"n,omitempty"`
	Errno uint32 `json:"e,omitempty"`
	// Data is the KV machine's response of an opKV command.
	Data []byte `json:"d,omitempty"`
	// Err is an internal (non-POSIX) failure; it is never recorded.
	Err string `json:"err,omitempty"`
}

func encodeResult(r *applyResult) ([]byte, error) {
	w := wireResult{Attr: r.attr, Attr2: r.attr2, Ino: r.ino, N: r.n, Data: r.data}
	var errno syscall.Errno
	switch {
	case r.err == nil:
	case errors.As(r.err, &errno):
		w.Errno = uint32(errno)
	default:
		w.Err = r.err.Error()
	}
	b, err := json.Marshal(&w)
	if err != nil {
		return nil, fmt.Errorf("meta: encode result: %w", err)
	}
	return b, nil
}

func decodeResult(b []byte) (*applyResult, error) {
	var w wireResult
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("meta: decode result: %w", err)
	}
	r := &applyResult{attr: w.Attr, attr2: w.Attr2, ino: w.Ino, n: w.N, data: w.Data}
	switch {
	case w.Errno != 0:
		r.err = syscall.Errno(w.Errno)
	case w.Err != "":
		r.err = fmt.Errorf("meta: leader: %s", w.Err)
	}
	return r, nil
}

// recordResult adds the dedup record of a command applied at a.index.
func (a *applyCtx) recordResult(c *command, res *applyResult) error {
	enc, err := encodeResult(res)
	if err != nil {
		return err
	}
	v := binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(enc)), a.index)
	a.set(dedupKey(c.Origin, c.Seq), append(v, enc...))
	a.set(expiryKey(a.index, c.Origin, c.Seq), nil)
	return nil
}

// recordedResult returns the result recorded for the command's id, or nil.
func (a *applyCtx) recordedResult(c *command) (*applyResult, error) {
	v, ok, err := a.get(dedupKey(c.Origin, c.Seq))
	if err != nil || !ok {
		return nil, err
	}
	if len(v) < 8 {
		return nil, fmt.Errorf("meta: dedup record of %d bytes", len(v))
	}
	return decodeResult(v[8:])
}

// pruneDedup deletes up to dedupPrunePerBatch records older than the
// window. A transaction that is too full skips pruning; a later batch does
// it.
func (b *batch) pruneDedup() error {
	if b.cnt.Applied <= dedupWindow {
		return nil
	}
	limit := b.cnt.Applied - dedupWindow
	var expired [][]byte
	p := []byte{prefixExpiry}
	a := &applyCtx{batch: b}
	errStop := errors.New("stop")
	err := a.scan(p, false, func(k, _ []byte) error {
		if len(k) < 9 || beUint64(k[1:]) >= limit || len(expired) >= dedupPrunePerBatch {
			return errStop
		}
		expired = append(expired, k)
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return fmt.Errorf("meta: scan dedup expiry: %w", err)
	}
	for _, k := range expired {
		for _, del := range [][]byte{k, append([]byte{prefixDedup}, k[9:]...)} {
			if err := b.txn.Delete(del); err != nil {
				if errors.Is(err, badger.ErrTxnTooBig) {
					return nil
				}
				return fmt.Errorf("meta: prune dedup: %w", err)
			}
		}
	}
	return nil
}
