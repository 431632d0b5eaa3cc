package meta

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/raft"
)

// ErrDataDirInUse is returned by Open when another process holds the
// metadata directory.
var ErrDataDirInUse = errors.New("data dir is in use by another process")

// ErrClosed is returned by methods called after Close.
var ErrClosed = errors.New("meta: service is closed")

// Service is the metadata service of one node: a Raft state machine over
// Badger holding inodes, directory entries, block maps, xattrs and id
// counters. Every change is one Raft command; reads come from the local
// state machine (in a cluster after a ReadIndex, so they are
// linearizable).
//
// Errors that are POSIX conditions are returned as syscall.Errno values
// (ENOENT, EEXIST, ENOTEMPTY, ...), possibly wrapped; anything else is an
// internal error that the file system reports as EIO.
//
// All methods are safe for concurrent use.
type Service struct {
	cfg       Config
	logger    *slog.Logger
	blockSize uint32

	raftDB    *badger.DB
	stateDB   *badger.DB
	logs      *raftStore
	snapshots *raft.FileSnapshotStore
	trans     *raft.NetworkTransport
	raft      *raft.Raft
	fsm       *fsm

	// mu is held shared by every read and apply and exclusively by Close,
	// so the databases are never closed under a running call.
	mu     sync.RWMutex
	closed bool

	// base is canceled when Close starts, to end retry loops.
	base       context.Context
	cancelBase context.CancelFunc
	// seq numbers this node's commands (see dedup.go).
	seq atomic.Uint64
	// readyTerm is the leadership term in which this node, as leader,
	// committed its ready marker (see ensureReady); readyMu serializes it.
	readyTerm atomic.Uint64
	readyMu   sync.Mutex
	// rbMu guards the follower's read index batching (followerReadIndex).
	rbMu      sync.Mutex
	rbNext    *readBatch
	rbSending bool
	// leaderChanged is closed when the leader changes (watchLeader).
	leaderMu      sync.Mutex
	leaderChanged chan struct{}
	// pins is the local file system's pins (SetLocalPins).
	pins atomic.Pointer[pinsHolder]
}

// Open opens (or creates and bootstraps) the metadata service in cfg.Dir
// and waits until it can serve requests: alone, until this node is the
// leader; in a cluster (cfg.Transport), until it has joined if asked to
// and a linearizable read succeeds (a leader exists and this node caught
// up with it).
func Open(ctx context.Context, cfg Config) (*Service, error) {
	cfg = cfg.withDefaults()
	if cfg.Dir == "" {
		return nil, errors.New("meta: Config.Dir is empty")
	}
	if !cfg.clustered() && (len(cfg.Peers) > 0 || cfg.Join != "") {
		return nil, errors.New("meta: Peers and Join need a Transport")
	}
	s := &Service{cfg: cfg, logger: cfg.Logger.With("component", "meta", "node", cfg.NodeID)}
	s.base, s.cancelBase = context.WithCancel(context.Background())
	s.seq.Store(uint64(time.Now().UnixNano()))
	if err := s.open(ctx); err != nil {
		s.cancelBase()
		s.shutdown()
		return nil, err
	}
	return s, nil
}

func (s *Service) open(ctx context.Context) error {
	cfg := s.cfg
	for _, d := range []string{"raft", "state", "snapshots"} {
		if err := os.MkdirAll(filepath.Join(cfg.Dir, d), 0o755); err != nil {
			return fmt.Errorf("meta: create %s: %w", d, err)
		}
	}
	var err error
	if s.stateDB, err = openBadger(filepath.Join(cfg.Dir, "state"), false, 16<<20, s.logger); err != nil {
		return err
	}
	if s.raftDB, err = openBadger(filepath.Join(cfg.Dir, "raft"), true, 8<<20, s.logger); err != nil {
		return err
	}
	s.logs = &raftStore{db: s.raftDB}
	if s.fsm, err = newFSM(s.stateDB, s.logger); err != nil {
		return err
	}
	s.fsm.onChange = cfg.OnChange
	s.fsm.kv = cfg.KV
	hlog := newRaftLogger(cfg.Logger)
	if s.snapshots, err = raft.NewFileSnapshotStoreWithLogger(filepath.Join(cfg.Dir, "snapshots"), 2, hlog); err != nil {
		return fmt.Errorf("meta: open snapshot store: %w", err)
	}
	if err := s.recoverFromSnapshot(); err != nil {
		return err
	}
	if cfg.clustered() {
		if s.trans, err = s.newClusterTransport(); err != nil {
			return err
		}
	} else if s.trans, err = raft.NewTCPTransportWithLogger(cfg.BindAddr, nil, 3, 10*time.Second, hlog); err != nil {
		return fmt.Errorf("meta: raft transport on %s: %w", cfg.BindAddr, err)
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.Logger = hlog
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.TrailingLogs = cfg.TrailingLogs
	rc.HeartbeatTimeout = cfg.ElectionTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.ElectionTimeout / 2
	// The state machine is persistent and idempotent (see fsm): restoring
	// the snapshot at start would only wipe and reload it.
	rc.NoSnapshotRestoreOnStart = true
	if cfg.clustered() {
		// Followers learn the commit index from AppendEntries, sent at
		// the latest after CommitTimeout when idle: it bounds how long a
		// linearizable read on a follower waits.
		rc.CommitTimeout = 5 * time.Millisecond
	}

	existing, err := raft.HasExistingState(s.logs, s.logs, s.snapshots)
	if err != nil {
		return fmt.Errorf("meta: check raft state: %w", err)
	}
	joining := !existing && cfg.clustered() && cfg.Join != "" && len(cfg.Peers) == 0
	if !existing && !joining {
		conf, err := s.bootstrapConfiguration()
		if err != nil {
			return err
		}
		if err := raft.BootstrapCluster(rc, s.logs, s.logs, s.snapshots, s.trans, conf); err != nil {
			return fmt.Errorf("meta: bootstrap raft: %w", err)
		}
	}
	if s.raft, err = raft.NewRaft(rc, s.fsm, s.logs, s.logs, s.snapshots, s.trans); err != nil {
		return fmt.Errorf("meta: start raft: %w", err)
	}
	if cfg.clustered() {
		return s.startCluster(ctx, joining)
	}
	if err := s.waitLeader(ctx); err != nil {
		return err
	}
	// Everything in the log is applied before the first read is served.
	if err := s.raft.Barrier(timeoutOf(ctx)).Error(); err != nil {
		return fmt.Errorf("meta: wait for log replay: %w", err)
	}
	return s.bootstrapNamespace(ctx)
}

// recoverFromSnapshot restores the newest snapshot if the state machine is
// behind it (its database was lost or replaced): with
// NoSnapshotRestoreOnStart Raft would otherwise replay only the log after
// the snapshot onto a state that lacks what came before.
func (s *Service) recoverFromSnapshot() error {
	metas, err := s.snapshots.List()
	if err != nil {
		return fmt.Errorf("meta: list snapshots: %w", err)
	}
	if len(metas) == 0 || s.fsm.applied.Load() >= metas[0].Index {
		return nil
	}
	s.logger.Warn("state machine is behind the newest snapshot; restoring it",
		"applied", s.fsm.applied.Load(), "snapshot", metas[0].ID, "index", metas[0].Index)
	_, rc, err := s.snapshots.Open(metas[0].ID)
	if err != nil {
		return fmt.Errorf("meta: open snapshot %s: %w", metas[0].ID, err)
	}
	return s.fsm.Restore(rc)
}

func (s *Service) waitLeader(ctx context.Context) error {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for s.raft.State() != raft.Leader {
		select {
		case <-ctx.Done():
			return fmt.Errorf("meta: wait for leadership: %w", ctx.Err())
		case <-t.C:
		}
	}
	return nil
}

// bootstrapNamespace creates the root and fixes the block size on first
// start, and checks the block size on later ones.
func (s *Service) bootstrapNamespace(ctx context.Context) error {
	s.fsm.mu.Lock()
	stored := uint32(s.fsm.cnt.BlockSize)
	s.fsm.mu.Unlock()
	want := s.cfg.BlockSize
	switch {
	case stored != 0 && want != 0 && stored != want:
		return fmt.Errorf("meta: %s was formatted with block size %d, not %d", s.cfg.Dir, stored, want)
	case stored != 0:
		s.blockSize = stored
		return nil
	case want == 0:
		want = DefaultBlockSize
	}
	_, err := s.apply(ctx, &command{Op: opBootstrap, BlockSize: want, Now: time.Now().UnixNano()})
	if err != nil {
		return fmt.Errorf("meta: bootstrap namespace: %w", err)
	}
	s.blockSize = want
	return nil
}

func openBadger(dir string, syncWrites bool, memtable int64, logger *slog.Logger) (*badger.DB, error) {
	opts := badger.DefaultOptions(dir).
		WithSyncWrites(syncWrites).
		WithLogger(badgerLogger{logger: logger, db: dir}).
		WithMemTableSize(memtable).
		WithNumMemtables(3).
		WithBlockCacheSize(memtable).
		WithValueLogFileSize(64 << 20).
		WithNumCompactors(2).
		WithDetectConflicts(false).
		WithMetricsEnabled(false)
	db, err := badger.Open(opts)
	if err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) || strings.Contains(err.Error(), "Cannot acquire directory lock") {
			return nil, fmt.Errorf("meta: %s is locked by another process (%v): %w", dir, err, ErrDataDirInUse)
		}
		return nil, fmt.Errorf("meta: open badger %s: %w", dir, err)
	}
	return db, nil
}

// Close shuts down Raft and closes the databases. A leader of a cluster
// with other voters first hands leadership to one of them, so writes
// pause for a heartbeat rather than an election timeout. It is safe to
// call once. Later calls return nil.
func (s *Service) Close() error { return s.close(true) }

func (s *Service) close(transfer bool) error {
	s.cancelBase()
	if transfer {
		s.transferLeadership()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return s.shutdown()
}

// transferLeadership hands leadership to another voter if this node leads
// and there is one.
func (s *Service) transferLeadership() {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed || s.raft == nil || !s.cfg.clustered() || s.raft.State() != raft.Leader {
		return
	}
	f := s.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	others := 0
	for _, srv := range f.Configuration().Servers {
		if srv.Suffrage == raft.Voter && string(srv.ID) != s.cfg.NodeID {
			others++
		}
	}
	if others == 0 {
		return
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := wait(ctx, s.raft.LeadershipTransfer()); err != nil {
		s.logger.Warn("leadership transfer on close failed", "err", err)
		return
	}
	s.logger.Info("handed over leadership", "to", s.leaderAddr(), "took", time.Since(start))
}

func (s *Service) shutdown() error {
	var errs []error
	if s.raft != nil {
		if err := s.raft.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("meta: raft shutdown: %w", err))
		}
	}
	if s.trans != nil {
		if err := s.trans.Close(); err != nil {
			errs = append(errs, fmt.Errorf("meta: close transport: %w", err))
		}
	}
	for _, db := range []*badger.DB{s.stateDB, s.raftDB} {
		if db != nil {
			if err := db.Close(); err != nil {
				errs = append(errs, fmt.Errorf("meta: close badger: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// BlockSize returns the file system block size fixed at bootstrap.
func (s *Service) BlockSize() uint32 { return s.blockSize }

// Snapshot forces a Raft snapshot and log compaction now.
func (s *Service) Snapshot(ctx context.Context) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	f := s.raft.Snapshot()
	if err := wait(ctx, f); err != nil {
		return fmt.Errorf("meta: snapshot: %w", err)
	}
	return nil
}

// AppliedIndex returns the index of the last command applied.
func (s *Service) AppliedIndex() uint64 { return s.fsm.applied.Load() }

func timeoutOf(ctx context.Context) time.Duration {
	if dl, ok := ctx.Deadline(); ok {
		if d := time.Until(dl); d > 0 {
			return d
		}
		return time.Nanosecond
	}
	return 0
}

// wait waits for a Raft future, giving up when ctx is done (the operation
// may still complete).
func wait(ctx context.Context, f raft.Future) error {
	if ctx.Done() == nil {
		return f.Error()
	}
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// apply proposes one command through Raft and returns its result. It is
// the only way state changes. A POSIX failure is returned as the error
// (a syscall.Errno). If ctx ends first the command may still be applied.
//
// In a cluster the command gets an id and goes through applyCluster:
// proposed here on the leader, forwarded to it elsewhere, retried through
// elections (see doc.go, "Cluster").
func (s *Service) apply(ctx context.Context, c *command) (*applyResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.cfg.clustered() {
		c.Origin, c.Seq = s.cfg.NodeID, s.seq.Add(1)
	}
	data, err := encodeCommand(c)
	if err != nil {
		return nil, err
	}
	if s.cfg.clustered() {
		return s.applyCluster(ctx, data)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	f := s.raft.Apply(data, timeoutOf(ctx))
	if err := wait(ctx, f); err != nil {
		return nil, fmt.Errorf("meta: apply: %w", err)
	}
	res, ok := f.Response().(*applyResult)
	if !ok || res == nil {
		return nil, fmt.Errorf("meta: apply: unexpected response %T", f.Response())
	}
	return res, res.err
}

// view runs a read-only transaction on the local state machine. It is the
// only way state is read.
//
// In a cluster the read is linearizable: it waits for a leader-confirmed
// read index first (linearize).
func (s *Service) view(ctx context.Context, fn func(txn *badger.Txn) error) error {
	return s.viewAs(ctx, true, fn)
}

// viewAs is view, linearizable in a cluster only when asked.
func (s *Service) viewAs(ctx context.Context, linearizable bool, fn func(txn *badger.Txn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if linearizable && s.cfg.clustered() {
		if err := s.linearize(ctx); err != nil {
			return err
		}
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	s.fsm.restoreMu.RLock()
	defer s.fsm.restoreMu.RUnlock()
	return s.stateDB.View(fn)
}

func getInode(txn *badger.Txn, ino Ino) (Attr, string, error) {
	item, err := txn.Get(inodeKey(ino))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return Attr{}, "", syscall.ENOENT
	}
	if err != nil {
		return Attr{}, "", fmt.Errorf("meta: read inode %d: %w", ino, err)
	}
	var attr Attr
	var target string
	err = item.Value(func(v []byte) error {
		attr, target, err = decodeInode(ino, v)
		return err
	})
	return attr, target, err
}

// Lookup returns the attributes of the child Name of directory Parent.
func (s *Service) Lookup(ctx context.Context, parent Ino, name string) (Attr, error) {
	if len(name) > MaxNameLen {
		return Attr{}, syscall.ENAMETOOLONG
	}
	var attr Attr
	err := s.view(ctx, func(txn *badger.Txn) error {
		p, _, err := getInode(txn, parent)
		if err != nil {
			return err
		}
		if !p.IsDir() {
			return syscall.ENOTDIR
		}
		item, err := txn.Get(dentryKey(parent, name))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return syscall.ENOENT
		}
		if err != nil {
			return fmt.Errorf("meta: lookup %d/%q: %w", parent, name, err)
		}
		var ino Ino
		if err := item.Value(func(v []byte) error {
			ino, _, err = decodeDentry(v)
			return err
		}); err != nil {
			return err
		}
		attr, _, err = getInode(txn, ino)
		return err
	})
	return attr, err
}

// GetAttr returns the attributes of an inode (also of an orphan: an
// unlinked inode that is still open).
func (s *Service) GetAttr(ctx context.Context, ino Ino) (Attr, error) {
	var attr Attr
	err := s.view(ctx, func(txn *badger.Txn) error {
		var err error
		attr, _, err = getInode(txn, ino)
		return err
	})
	return attr, err
}

// SetAttr changes attributes. Shrinking Size drops block map entries past
// the new end (they become garbage) and shortens the boundary block's Len.
// A size change bumps Version and sets mtime to Now; ctime is always Now.
// Size can only be set on regular files (EISDIR for a directory, EINVAL
// for other types).
func (s *Service) SetAttr(ctx context.Context, ino Ino, req SetAttrRequest) (Attr, error) {
	res, err := s.apply(ctx, &command{Op: opSetAttr, Ino: ino, SetAttr: &req})
	if err != nil {
		return Attr{}, err
	}
	return res.attr, nil
}

// Create makes a new inode of req.Mode's type (regular, fifo, socket,
// device, directory or symlink) and links it. It fails with EEXIST if the
// name exists, ENOTDIR if Parent is not a directory, ENAMETOOLONG.
// Mode without type bits makes a regular file.
func (s *Service) Create(ctx context.Context, req CreateRequest) (Attr, error) {
	if !req.Unlinked {
		if err := validName(req.Name); err != nil {
			return Attr{}, err
		}
	}
	res, err := s.apply(ctx, &command{Op: opCreate, Create: &req})
	if err != nil {
		return Attr{}, err
	}
	return res.attr, nil
}

// Readlink returns a symlink's target (EINVAL if ino is not a symlink).
func (s *Service) Readlink(ctx context.Context, ino Ino) (string, error) {
	var target string
	err := s.view(ctx, func(txn *badger.Txn) error {
		attr, t, err := getInode(txn, ino)
		if err != nil {
			return err
		}
		if !attr.IsSymlink() {
			return syscall.EINVAL
		}
		target = t
		return nil
	})
	return target, err
}

// Link adds a hard link NewName in NewParent to ino (not a directory: EPERM).
func (s *Service) Link(ctx context.Context, ino, newParent Ino, newName string, now int64) (Attr, error) {
	res, err := s.apply(ctx, &command{Op: opLink, Ino: ino, NewParent: newParent, NewName: newName, Now: now})
	if err != nil {
		return Attr{}, err
	}
	return res.attr, nil
}

// Unlink removes a non-directory entry and returns the child's attributes
// afterwards. An inode whose Nlink reaches 0 becomes an orphan: it stays
// readable by ino until Purge.
func (s *Service) Unlink(ctx context.Context, parent Ino, name string, now int64) (Attr, error) {
	res, err := s.apply(ctx, &command{Op: opUnlink, Parent: parent, Name: name, Now: now})
	if err != nil {
		return Attr{}, err
	}
	return res.attr, nil
}

// Rmdir removes an empty directory (ENOTEMPTY otherwise, ENOTDIR if it is
// not a directory) and returns its attributes afterwards. Like a file at
// zero links, the directory becomes an orphan (Nlink 0) that stays readable
// by ino, and takes no new entries, until Purge.
func (s *Service) Rmdir(ctx context.Context, parent Ino, name string, now int64) (Attr, error) {
	res, err := s.apply(ctx, &command{Op: opRmdir, Parent: parent, Name: name, Now: now})
	if err != nil {
		return Attr{}, err
	}
	return res.attr, nil
}

// Rename implements renameat2 with RENAME_NOREPLACE and RENAME_EXCHANGE.
// A replaced directory (it was empty) becomes an orphan like rmdir makes
// it; a replaced file loses a link and becomes an orphan at zero links.
func (s *Service) Rename(ctx context.Context, parent Ino, name string, newParent Ino, newName string, flags RenameFlags, now int64) (RenameResult, error) {
	if err := validName(newName); err != nil && !errors.Is(err, syscall.EEXIST) {
		return RenameResult{}, err
	}
	res, err := s.apply(ctx, &command{
		Op: opRename, Parent: parent, Name: name, NewParent: newParent, NewName: newName,
		Flags: uint32(flags), Now: now,
	})
	if err != nil {
		return RenameResult{}, err
	}
	return RenameResult{Replaced: res.ino, ReplacedAttr: res.attr2}, nil
}

// ReadDir returns up to limit entries of directory ino whose names sort
// after `after` (empty: from the start), in name order. It does not return
// "." and "..". A limit of 0 or less means no limit.
func (s *Service) ReadDir(ctx context.Context, ino Ino, after string, limit int) ([]Dirent, error) {
	var out []Dirent
	err := s.view(ctx, func(txn *badger.Txn) error {
		attr, _, err := getInode(txn, ino)
		if err != nil {
			return err
		}
		if !attr.IsDir() {
			return syscall.ENOTDIR
		}
		p := dentryPrefix(ino)
		opts := badger.DefaultIteratorOptions
		opts.Prefix = p
		opts.PrefetchSize = 64
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Seek(dentryKey(ino, after)); it.Valid(); it.Next() {
			item := it.Item()
			name := string(item.Key()[len(p):])
			if name <= after && after != "" {
				continue
			}
			var d Dirent
			if err := item.Value(func(v []byte) error {
				d.Ino, d.Mode, err = decodeDentry(v)
				return err
			}); err != nil {
				return err
			}
			d.Name = name
			out = append(out, d)
			if limit > 0 && len(out) >= limit {
				break
			}
		}
		return nil
	})
	return out, err
}

// Blocks returns the block map of a file (ENOENT if ino does not exist).
func (s *Service) Blocks(ctx context.Context, ino Ino) (BlockMap, error) {
	bm := BlockMap{}
	err := s.view(ctx, func(txn *badger.Txn) error {
		if _, _, err := getInode(txn, ino); err != nil {
			return err
		}
		p := blockPrefix(ino)
		opts := badger.DefaultIteratorOptions
		opts.Prefix = p
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Seek(p); it.Valid(); it.Next() {
			item := it.Item()
			idx := beUint64(item.Key()[len(p):])
			if err := item.Value(func(v []byte) error {
				ref, err := decodeBlockRef(v)
				bm[idx] = ref
				return err
			}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return bm, nil
}

// CommitWrite atomically installs new blocks, size and mtime of a file and
// bumps its version. Block refs it replaces become garbage.
func (s *Service) CommitWrite(ctx context.Context, c WriteCommit) (Attr, error) {
	res, err := s.apply(ctx, &command{Op: opCommitWrite, Write: &c})
	if err != nil {
		return Attr{}, err
	}
	return res.attr, nil
}

// AllocBlocks reserves n fresh block ids and returns the first; the range
// is [first, first+n). Ids start at 1.
func (s *Service) AllocBlocks(ctx context.Context, n uint64) (BlockID, error) {
	if n == 0 {
		return 0, syscall.EINVAL
	}
	res, err := s.apply(ctx, &command{Op: opAllocBlocks, N: n})
	if err != nil {
		return 0, err
	}
	return BlockID(res.n), nil
}

// Purge deletes an orphan inode (Nlink 0) and turns its blocks into
// garbage. Purging a linked inode is a no-op, and so is purging an inode
// that no longer exists.
//
// In a cluster, an inode still open on any node is not purged (nil is
// returned; the node that closes it last purges it), and a node that
// cannot be asked fails the call: purging is never risked.
func (s *Service) Purge(ctx context.Context, ino Ino) error {
	if open, err := s.openAnywhere(ctx, ino); err != nil || open {
		if err != nil {
			return fmt.Errorf("meta: purge %d: %w", ino, err)
		}
		return nil
	}
	_, err := s.apply(ctx, &command{Op: opPurge, Ino: ino})
	return err
}

// Orphans lists inodes with Nlink 0 that have not been purged.
func (s *Service) Orphans(ctx context.Context) ([]Ino, error) {
	var out []Ino
	err := s.scanKeys(ctx, []byte{prefixOrphan}, func(k []byte) error {
		out = append(out, Ino(beUint64(k[1:])))
		return nil
	})
	return out, err
}

// Garbage lists up to limit unreferenced blocks, oldest first. A limit of
// 0 or less means no limit.
func (s *Service) Garbage(ctx context.Context, limit int) ([]Garbage, error) {
	var out []Garbage
	errStop := errors.New("stop")
	err := s.scanKeys(ctx, []byte{prefixGarbage}, func(k []byte) error {
		out = append(out, Garbage{FreedAt: beUint64(k[1:]), ID: BlockID(beUint64(k[9:]))})
		if limit > 0 && len(out) >= limit {
			return errStop
		}
		return nil
	})
	if errors.Is(err, errStop) {
		err = nil
	}
	return out, err
}

// ForgetGarbage removes blocks from the garbage list after the caller has
// deleted them from the store. Ids not on the list are ignored.
func (s *Service) ForgetGarbage(ctx context.Context, ids []BlockID) error {
	if len(ids) == 0 {
		return nil
	}
	_, err := s.apply(ctx, &command{Op: opForgetGarbage, IDs: ids})
	return err
}

// ReferencedBlocks calls fn for every block referenced by any inode
// (orphans included) or still on the garbage list. fn runs inside a read
// transaction; an error from it stops the scan and is returned.
func (s *Service) ReferencedBlocks(ctx context.Context, fn func(BlockID) error) error {
	return s.view(ctx, func(txn *badger.Txn) error {
		for _, p := range []byte{prefixBlock, prefixGarbID} {
			opts := badger.DefaultIteratorOptions
			opts.Prefix = []byte{p}
			it := txn.NewIterator(opts)
			for it.Seek([]byte{p}); it.Valid(); it.Next() {
				item := it.Item()
				var id BlockID
				if p == prefixGarbID {
					id = BlockID(beUint64(item.Key()[1:]))
				} else if err := item.Value(func(v []byte) error {
					ref, err := decodeBlockRef(v)
					id = ref.ID
					return err
				}); err != nil {
					it.Close()
					return err
				}
				if err := fn(id); err != nil {
					it.Close()
					return err
				}
			}
			it.Close()
		}
		return nil
	})
}

// NextBlockID returns the lowest block id never handed out: every block in
// the store with an id at or above it was not allocated by this cluster.
func (s *Service) NextBlockID(ctx context.Context) (BlockID, error) {
	cnt, err := s.counters(ctx)
	return BlockID(cnt.NextBlock), err
}

// GetXattr returns the value of an extended attribute (ENODATA if absent).
func (s *Service) GetXattr(ctx context.Context, ino Ino, name string) ([]byte, error) {
	if err := validXattr(name, nil); err != nil {
		return nil, err
	}
	var val []byte
	err := s.view(ctx, func(txn *badger.Txn) error {
		if _, _, err := getInode(txn, ino); err != nil {
			return err
		}
		item, err := txn.Get(xattrKey(ino, name))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return syscall.ENODATA
		}
		if err != nil {
			return fmt.Errorf("meta: get xattr: %w", err)
		}
		val, err = item.ValueCopy(nil)
		return err
	})
	return val, err
}

// SetXattr sets an extended attribute; XattrCreate fails with EEXIST if it
// exists, XattrReplace with ENODATA if it does not. Names longer than
// MaxNameLen fail with ERANGE, values larger than MaxXattrSize with E2BIG.
func (s *Service) SetXattr(ctx context.Context, ino Ino, name string, value []byte, flags XattrFlags, now int64) error {
	if err := validXattr(name, value); err != nil {
		return err
	}
	_, err := s.apply(ctx, &command{Op: opSetXattr, Ino: ino, Name: name, Value: value, Flags: uint32(flags), Now: now})
	return err
}

// ListXattr returns the names of all extended attributes of an inode.
func (s *Service) ListXattr(ctx context.Context, ino Ino) ([]string, error) {
	var names []string
	err := s.view(ctx, func(txn *badger.Txn) error {
		if _, _, err := getInode(txn, ino); err != nil {
			return err
		}
		p := xattrPrefix(ino)
		opts := badger.DefaultIteratorOptions
		opts.PrefetchValues = false
		opts.Prefix = p
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Seek(p); it.Valid(); it.Next() {
			names = append(names, string(it.Item().Key()[len(p):]))
		}
		return nil
	})
	return names, err
}

// RemoveXattr removes an extended attribute (ENODATA if absent).
func (s *Service) RemoveXattr(ctx context.Context, ino Ino, name string, now int64) error {
	if err := validXattr(name, nil); err != nil {
		return err
	}
	_, err := s.apply(ctx, &command{Op: opRemoveXattr, Ino: ino, Name: name, Now: now})
	return err
}

// StatFS returns namespace totals: the number of inodes (orphans included)
// and the sum of the sizes of regular files.
func (s *Service) StatFS(ctx context.Context) (FSStats, error) {
	cnt, err := s.counters(ctx)
	return FSStats{Inodes: cnt.Inodes, UsedBytes: cnt.UsedBytes}, err
}

func (s *Service) counters(ctx context.Context) (counters, error) {
	var cnt counters
	err := s.view(ctx, func(txn *badger.Txn) error {
		item, err := txn.Get([]byte(keyCounters))
		if err != nil {
			return fmt.Errorf("meta: read counters: %w", err)
		}
		return item.Value(func(v []byte) error {
			cnt, err = decodeCounters(v)
			return err
		})
	})
	return cnt, err
}

// scanKeys calls fn with every key that has prefix p.
func (s *Service) scanKeys(ctx context.Context, p []byte, fn func(k []byte) error) error {
	return s.view(ctx, func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.PrefetchValues = false
		opts.Prefix = p
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Seek(p); it.Valid(); it.Next() {
			if err := fn(it.Item().Key()); err != nil {
				return err
			}
		}
		return nil
	})
}
