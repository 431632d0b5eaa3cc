package meta

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/raft"
)

// fsm is the Raft state machine: a Badger database holding the namespace.
//
// Apply is idempotent: the index of the last applied command is stored in
// the counters record, in the same Badger transaction as the command's
// effects, and entries at or below it are skipped. That lets the database
// run without synchronous writes (the synced Raft log is the durable
// record) and lets Raft start without restoring the last snapshot
// (Config.NoSnapshotRestoreOnStart): it replays the log after the snapshot
// and whatever the database already holds is skipped.
type fsm struct {
	db     *badger.DB
	logger *slog.Logger

	// applied mirrors cnt.Applied for lock-free AppliedIndex.
	applied atomic.Uint64
	// seen is the highest log index handed to the state machine of any
	// type (configuration entries change no state and leave Applied
	// alone): what linearizable reads wait for.
	seen atomic.Uint64
	// advMu guards adv, closed and replaced whenever seen advances.
	advMu sync.Mutex
	adv   chan struct{}

	// restoreMu is held shared by readers of db and exclusively by
	// Restore, so no read sees a half-loaded state.
	restoreMu sync.RWMutex

	// onChange receives what applied commands changed (nil: nobody).
	onChange func(origin string, changes []Change)
	// kv is the KV machine (nil: none); see kv.go.
	kv KVMachine

	// mu guards cnt and failed. Raft calls Apply, ApplyBatch, Snapshot and
	// Restore from one goroutine; mu only orders them against readers.
	mu  sync.Mutex
	cnt counters
	// failed is set when a write to the database failed: the state no
	// longer matches the log, so nothing more is applied (a restart
	// replays the log from the last committed index).
	failed error
}

var (
	_ raft.FSM         = (*fsm)(nil)
	_ raft.BatchingFSM = (*fsm)(nil)
)

func newFSM(db *badger.DB, logger *slog.Logger) (*fsm, error) {
	f := &fsm{db: db, logger: logger}
	if err := f.loadCounters(); err != nil {
		return nil, err
	}
	return f, nil
}

func (f *fsm) loadCounters() error {
	var cnt counters
	err := f.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(keyCounters))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		return item.Value(func(v []byte) error {
			cnt, err = decodeCounters(v)
			return err
		})
	})
	if err != nil {
		return fmt.Errorf("meta: load counters: %w", err)
	}
	f.mu.Lock()
	f.cnt = cnt
	f.mu.Unlock()
	f.applied.Store(cnt.Applied)
	f.advance(cnt.Applied)
	return nil
}

// advance raises seen to index and wakes waiters.
func (f *fsm) advance(index uint64) {
	for {
		cur := f.seen.Load()
		if index <= cur {
			if index < cur || index == 0 {
				return
			}
			break
		}
		if f.seen.CompareAndSwap(cur, index) {
			break
		}
	}
	f.advMu.Lock()
	if f.adv != nil {
		close(f.adv)
		f.adv = nil
	}
	f.advMu.Unlock()
}

// advanced returns a channel closed when seen next advances.
func (f *fsm) advanced() <-chan struct{} {
	f.advMu.Lock()
	defer f.advMu.Unlock()
	if f.adv == nil {
		f.adv = make(chan struct{})
	}
	return f.adv
}

// applyResult is what a command returns through raft.ApplyFuture.Response.
type applyResult struct {
	attr  Attr
	attr2 Attr // the replaced inode of a rename
	ino   Ino
	n     uint64
	data  []byte // the KV machine's response (opKV)
	err   error  // a syscall.Errno, or an internal error
}

// Apply applies one committed log entry.
func (f *fsm) Apply(l *raft.Log) interface{} {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

// ApplyBatch applies committed entries in one Badger transaction (split
// when the transaction grows too big) and returns one response per entry.
func (f *fsm) ApplyBatch(logs []*raft.Log) []interface{} {
	resps := make([]interface{}, len(logs))
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failed != nil {
		for i := range resps {
			resps[i] = &applyResult{err: f.failed}
		}
		return resps
	}
	b := &batch{f: f, txn: f.db.NewTransaction(true), cnt: f.cnt}
	defer func() { b.txn.Discard() }()
	var last uint64
	for i, l := range logs {
		last = max(last, l.Index)
		if l.Type != raft.LogCommand || l.Index <= b.cnt.Applied {
			continue
		}
		c, err := decodeCommand(l.Data)
		if err != nil {
			// A command this node cannot decode is skipped on every node
			// alike; it changes nothing but the applied index.
			f.logger.Error("meta: skipping undecodable command", "index", l.Index, "err", err)
			resps[i] = &applyResult{err: err}
			err = b.commitCommand(&applyCtx{batch: b, index: l.Index, cnt: b.cnt, writes: map[string]write{}})
			if err != nil {
				f.fail(err)
				resps[i] = &applyResult{err: f.failed}
				return resps
			}
			continue
		}
		res, err := b.apply(l.Index, c)
		if err != nil {
			f.fail(err)
			for j := range resps[i:] {
				resps[i+j] = &applyResult{err: f.failed}
			}
			return resps
		}
		resps[i] = res
	}
	if err := b.pruneDedup(); err != nil {
		f.logger.Warn("meta: prune command ids", "err", err)
	}
	if err := b.commit(); err != nil {
		f.fail(err)
		for i := range resps {
			resps[i] = &applyResult{err: f.failed}
		}
		return resps
	}
	f.cnt = b.cnt
	f.applied.Store(b.cnt.Applied)
	f.advance(last)
	if f.kv != nil && b.kvApplied {
		f.kv.Committed()
	}
	if f.onChange != nil {
		for _, cs := range b.changes {
			if len(cs.changes) > 0 {
				f.onChange(cs.origin, cs.changes)
			}
		}
	}
	return resps
}

func (f *fsm) fail(err error) {
	f.failed = fmt.Errorf("meta: state machine stopped after a storage failure: %w", err)
	f.logger.Error("meta: state machine write failed; restart to replay the log", "err", err)
}

// batch is one Badger transaction over a run of commands.
type batch struct {
	f   *fsm
	txn *badger.Txn
	cnt counters // the counters as of the last command added to txn
	// changes are the effects of the batch's commands, collected only
	// when the state machine has a subscriber.
	changes []changeSet
	// kvApplied is set when a KV command ran in the batch.
	kvApplied bool
}

// apply runs one command. A POSIX error leaves no trace but the applied
// index; an error return means storage failed.
func (b *batch) apply(index uint64, c *command) (*applyResult, error) {
	a := &applyCtx{batch: b, index: index, cnt: b.cnt, writes: map[string]write{}, inodes: map[Ino]*inodeEntry{}}
	if c.Origin != "" {
		res, err := a.recordedResult(c)
		if err != nil {
			return nil, err
		}
		if res != nil {
			// A retry of a command applied before: same outcome, no effect.
			if err := b.commitCommand(a); err != nil {
				return nil, err
			}
			return res, nil
		}
	}
	res, err := a.run(c)
	if err != nil {
		return nil, err
	}
	if res.err != nil {
		a.writes = map[string]write{}
		a.inodes = nil
		a.cnt = b.cnt
	}
	if err := a.flushInodes(); err != nil {
		return nil, err
	}
	if b.f.onChange != nil {
		b.changes = append(b.changes, changeSet{origin: c.Origin, changes: collectChanges(b.txn, a.writes)})
	}
	if c.Origin != "" {
		if err := a.recordResult(c, res); err != nil {
			return nil, err
		}
	}
	if err := b.commitCommand(a); err != nil {
		return nil, err
	}
	return res, nil
}

// commitCommand moves a command's writes and counters into the batch
// transaction, committing the transaction first if it is full.
func (b *batch) commitCommand(a *applyCtx) error {
	a.cnt.Applied = a.index
	if err := a.flushInodes(); err != nil {
		return err
	}
	writeAll := func() error {
		for k, w := range a.writes {
			var err error
			if w.del {
				err = b.txn.Delete([]byte(k))
			} else {
				err = b.txn.Set([]byte(k), w.val)
			}
			if err != nil {
				return err
			}
		}
		return b.txn.Set([]byte(keyCounters), a.cnt.encode())
	}
	err := writeAll()
	if errors.Is(err, badger.ErrTxnTooBig) {
		if err := b.commit(); err != nil {
			return err
		}
		b.txn = b.f.db.NewTransaction(true)
		err = writeAll()
	}
	if err != nil {
		return fmt.Errorf("meta: write command %d: %w", a.index, err)
	}
	b.cnt = a.cnt
	return nil
}

func (b *batch) commit() error {
	if err := b.txn.Commit(); err != nil {
		return fmt.Errorf("meta: commit state: %w", err)
	}
	b.f.cnt = b.cnt
	b.f.applied.Store(b.cnt.Applied)
	return nil
}

// Snapshot syncs the database (so nothing that the snapshot covers can be
// lost from it once Raft compacts the log) and returns a snapshot that
// streams a Badger backup.
//
// The backup is taken in Persist, concurrently with later Applies, so it
// may hold effects of commands after the snapshot's index. That is
// harmless: the applied index travels in the same backup, and replaying
// those commands after a Restore is skipped by idempotence.
func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	if err := f.db.Sync(); err != nil {
		return nil, fmt.Errorf("meta: sync state before snapshot: %w", err)
	}
	return &fsmSnapshot{db: f.db}, nil
}

// Restore replaces the whole state with a snapshot's backup. Readers are
// held off (restoreMu) while the database is dropped and reloaded.
func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	f.restoreMu.Lock()
	defer f.restoreMu.Unlock()
	if err := f.db.DropAll(); err != nil {
		return fmt.Errorf("meta: restore: drop state: %w", err)
	}
	if err := f.db.Load(rc, 256); err != nil {
		return fmt.Errorf("meta: restore: load backup: %w", err)
	}
	if err := f.db.Sync(); err != nil {
		return fmt.Errorf("meta: restore: sync: %w", err)
	}
	f.mu.Lock()
	f.failed = nil
	f.mu.Unlock()
	if err := f.loadCounters(); err != nil {
		return err
	}
	if f.kv != nil {
		f.kv.Committed()
	}
	return nil
}

type fsmSnapshot struct {
	db *badger.DB
}

// Persist streams a full Badger backup into the sink.
func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.db.Backup(sink, 0); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("meta: snapshot backup: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("meta: snapshot close: %w", err)
	}
	return nil
}

// Release is a no-op: the backup holds no resources after Persist.
func (s *fsmSnapshot) Release() {}
