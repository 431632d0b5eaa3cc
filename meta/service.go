package meta

import (
	"context"
	"errors"
	"log/slog"
	"time"
)

// Config configures a metadata service.
type Config struct {
	// Dir is where the Raft log, stable store, snapshots and the Badger
	// state machine live. It is created if missing.
	Dir string
	// NodeID is this node's Raft server id ("node1" by default).
	NodeID string
	// BindAddr is the Raft transport address ("127.0.0.1:0" picks a free
	// port on loopback; a single voter never talks to anyone).
	BindAddr string
	// SnapshotThreshold is how many log entries since the last snapshot
	// trigger a new one (0: 8192).
	SnapshotThreshold uint64
	// SnapshotInterval is how often Raft checks the threshold (0: 30s).
	SnapshotInterval time.Duration
	// TrailingLogs is how many entries stay in the log after a snapshot
	// (0: 1024).
	TrailingLogs uint64
	// Logger receives structured logs (nil: slog.Default()).
	Logger *slog.Logger
}

// ErrDataDirInUse is returned by Open when another process holds the
// metadata directory.
var ErrDataDirInUse = errors.New("data dir is in use by another process")

// Service is the metadata service of one node: a Raft state machine over
// Badger holding inodes, directory entries, block maps, xattrs and id
// counters. Every change is one Raft command; reads come from the local
// state machine.
//
// Errors that are POSIX conditions are returned as syscall.Errno values
// (ENOENT, EEXIST, ENOTEMPTY, ...), possibly wrapped; anything else is an
// internal error that the file system reports as EIO.
//
// All methods are safe for concurrent use.
type Service struct {
	cfg Config
}

// Open opens (or creates and bootstraps) the metadata service in cfg.Dir
// and waits until it can serve requests (this node is the leader).
func Open(ctx context.Context, cfg Config) (*Service, error) {
	panic("meta.Open: not implemented")
}

// Close shuts down Raft and closes the databases. It is safe to call once.
func (s *Service) Close() error { panic("not implemented") }

// Snapshot forces a Raft snapshot and log compaction now.
func (s *Service) Snapshot(ctx context.Context) error { panic("not implemented") }

// AppliedIndex returns the index of the last command applied.
func (s *Service) AppliedIndex() uint64 { panic("not implemented") }

// Lookup returns the attributes of the child Name of directory Parent.
func (s *Service) Lookup(ctx context.Context, parent Ino, name string) (Attr, error) {
	panic("not implemented")
}

// GetAttr returns the attributes of an inode (also of an orphan: an
// unlinked inode that is still open).
func (s *Service) GetAttr(ctx context.Context, ino Ino) (Attr, error) { panic("not implemented") }

// SetAttr changes attributes. Shrinking Size drops block map entries past
// the new end (they become garbage) and shortens the boundary block's Len.
func (s *Service) SetAttr(ctx context.Context, ino Ino, req SetAttrRequest) (Attr, error) {
	panic("not implemented")
}

// Create makes a new inode of req.Mode's type (regular, fifo, socket,
// device, directory or symlink) and links it. It fails with EEXIST if the
// name exists, ENOTDIR if Parent is not a directory, ENAMETOOLONG.
func (s *Service) Create(ctx context.Context, req CreateRequest) (Attr, error) {
	panic("not implemented")
}

// Readlink returns a symlink's target.
func (s *Service) Readlink(ctx context.Context, ino Ino) (string, error) { panic("not implemented") }

// Link adds a hard link NewName in NewParent to ino (not a directory: EPERM).
func (s *Service) Link(ctx context.Context, ino, newParent Ino, newName string, now int64) (Attr, error) {
	panic("not implemented")
}

// Unlink removes a non-directory entry and returns the child's attributes
// afterwards. An inode whose Nlink reaches 0 becomes an orphan: it stays
// readable by ino until Purge.
func (s *Service) Unlink(ctx context.Context, parent Ino, name string, now int64) (Attr, error) {
	panic("not implemented")
}

// Rmdir removes an empty directory (ENOTEMPTY otherwise, ENOTDIR if it is
// not a directory).
func (s *Service) Rmdir(ctx context.Context, parent Ino, name string, now int64) error {
	panic("not implemented")
}

// Rename implements renameat2 with RENAME_NOREPLACE and RENAME_EXCHANGE.
func (s *Service) Rename(ctx context.Context, parent Ino, name string, newParent Ino, newName string, flags RenameFlags, now int64) (RenameResult, error) {
	panic("not implemented")
}

// ReadDir returns up to limit entries of directory ino whose names sort
// after `after` (empty: from the start), in name order. It does not return
// "." and "..".
func (s *Service) ReadDir(ctx context.Context, ino Ino, after string, limit int) ([]Dirent, error) {
	panic("not implemented")
}

// Blocks returns the block map of a file.
func (s *Service) Blocks(ctx context.Context, ino Ino) (BlockMap, error) { panic("not implemented") }

// CommitWrite atomically installs new blocks, size and mtime of a file and
// bumps its version. Block refs it replaces become garbage.
func (s *Service) CommitWrite(ctx context.Context, c WriteCommit) (Attr, error) {
	panic("not implemented")
}

// AllocBlocks reserves n fresh block ids and returns the first; the range
// is [first, first+n).
func (s *Service) AllocBlocks(ctx context.Context, n uint64) (BlockID, error) {
	panic("not implemented")
}

// Purge deletes an orphan inode (Nlink 0) and turns its blocks into
// garbage. Purging a linked inode is a no-op.
func (s *Service) Purge(ctx context.Context, ino Ino) error { panic("not implemented") }

// Orphans lists inodes with Nlink 0 that have not been purged.
func (s *Service) Orphans(ctx context.Context) ([]Ino, error) { panic("not implemented") }

// Garbage lists up to limit unreferenced blocks, oldest first.
func (s *Service) Garbage(ctx context.Context, limit int) ([]Garbage, error) {
	panic("not implemented")
}

// ForgetGarbage removes blocks from the garbage list after the caller has
// deleted them from the store.
func (s *Service) ForgetGarbage(ctx context.Context, ids []BlockID) error {
	panic("not implemented")
}

// ReferencedBlocks calls fn for every block referenced by any inode
// (orphans included) or still on the garbage list.
func (s *Service) ReferencedBlocks(ctx context.Context, fn func(BlockID) error) error {
	panic("not implemented")
}

// NextBlockID returns the lowest block id never handed out: every block in
// the store with an id at or above it was not allocated by this cluster.
func (s *Service) NextBlockID(ctx context.Context) (BlockID, error) { panic("not implemented") }

// GetXattr returns the value of an extended attribute (ENODATA if absent).
func (s *Service) GetXattr(ctx context.Context, ino Ino, name string) ([]byte, error) {
	panic("not implemented")
}

// SetXattr sets an extended attribute; XattrCreate fails with EEXIST if it
// exists, XattrReplace with ENODATA if it does not.
func (s *Service) SetXattr(ctx context.Context, ino Ino, name string, value []byte, flags XattrFlags, now int64) error {
	panic("not implemented")
}

// ListXattr returns the names of all extended attributes of an inode.
func (s *Service) ListXattr(ctx context.Context, ino Ino) ([]string, error) {
	panic("not implemented")
}

// RemoveXattr removes an extended attribute (ENODATA if absent).
func (s *Service) RemoveXattr(ctx context.Context, ino Ino, name string, now int64) error {
	panic("not implemented")
}

// StatFS returns namespace totals.
func (s *Service) StatFS(ctx context.Context) (FSStats, error) { panic("not implemented") }
