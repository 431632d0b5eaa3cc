package fs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/meta"
	"github.com/datenlord/datenlord-go/store"
)

// Defaults for the zero fields of Config.
const (
	DefaultDirtyLimit   = 256 << 20
	DefaultAttrTimeout  = time.Second
	DefaultEntryTimeout = time.Second
)

// Config configures a mount.
type Config struct {
	// Mountpoint is an existing, empty directory that is not a mount point.
	Mountpoint string
	// BlockSize is the file system block size. It is a format-time
	// setting of the namespace: 0 takes the namespace's, any other value
	// must match it.
	BlockSize int
	// DirtyLimit bounds the bytes of unflushed writes on this node; a
	// writer that would exceed it flushes first (back-pressure). 0: 256 MiB.
	DirtyLimit int64
	// AttrTimeout and EntryTimeout are how long the kernel may cache
	// attributes and directory entries (0: 1s; negative: no caching).
	AttrTimeout  time.Duration
	EntryTimeout time.Duration
	// Logger receives structured logs (nil: slog.Default()).
	Logger *slog.Logger
	// Debug logs every FUSE request and reply.
	Debug bool
	// Registerer receives the FUSE operation metrics (nil: none).
	Registerer prometheus.Registerer
}

func (c *Config) setDefaults() {
	if c.DirtyLimit <= 0 {
		c.DirtyLimit = DefaultDirtyLimit
	}
	// One write of maxWrite bytes must fit, whatever its alignment.
	if lim := int64((maxWrite/c.BlockSize + 2) * c.BlockSize); c.DirtyLimit < lim {
		c.DirtyLimit = lim
	}
	if c.AttrTimeout == 0 {
		c.AttrTimeout = DefaultAttrTimeout
	}
	if c.EntryTimeout == 0 {
		c.EntryTimeout = DefaultEntryTimeout
	}
	if c.AttrTimeout < 0 {
		c.AttrTimeout = 0
	}
	if c.EntryTimeout < 0 {
		c.EntryTimeout = 0
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Metadata is the metadata service as the file system uses it.
// *meta.Service satisfies it; see its doc comments for the contracts
// (errors are syscall.Errno values, possibly wrapped).
type Metadata interface {
	// BlockSize is the namespace's block size, fixed at format time.
	BlockSize() uint32
	AppliedIndex() uint64
	Lookup(ctx context.Context, parent meta.Ino, name string) (meta.Attr, error)
	GetAttr(ctx context.Context, ino meta.Ino) (meta.Attr, error)
	SetAttr(ctx context.Context, ino meta.Ino, req meta.SetAttrRequest) (meta.Attr, error)
	Create(ctx context.Context, req meta.CreateRequest) (meta.Attr, error)
	Readlink(ctx context.Context, ino meta.Ino) (string, error)
	Link(ctx context.Context, ino, newParent meta.Ino, newName string, now int64) (meta.Attr, error)
	Unlink(ctx context.Context, parent meta.Ino, name string, now int64) (meta.Attr, error)
	Rmdir(ctx context.Context, parent meta.Ino, name string, now int64) (meta.Attr, error)
	Rename(ctx context.Context, parent meta.Ino, name string, newParent meta.Ino, newName string, flags meta.RenameFlags, now int64) (meta.RenameResult, error)
	ReadDir(ctx context.Context, ino meta.Ino, after string, limit int) ([]meta.Dirent, error)
	Blocks(ctx context.Context, ino meta.Ino) (meta.BlockMap, error)
	CommitWrite(ctx context.Context, c meta.WriteCommit) (meta.Attr, error)
	AllocBlocks(ctx context.Context, n uint64) (meta.BlockID, error)
	Purge(ctx context.Context, ino meta.Ino) error
	Orphans(ctx context.Context) ([]meta.Ino, error)
	GetXattr(ctx context.Context, ino meta.Ino, name string) ([]byte, error)
	SetXattr(ctx context.Context, ino meta.Ino, name string, value []byte, flags meta.XattrFlags, now int64) error
	ListXattr(ctx context.Context, ino meta.Ino) ([]string, error)
	RemoveXattr(ctx context.Context, ino meta.Ino, name string, now int64) error
	StatFS(ctx context.Context) (meta.FSStats, error)
}

// PageCache is the page cache as the file system uses it. *cache.Cache
// satisfies it.
type PageCache interface {
	// PageSize returns the page size (a divisor of the block size).
	PageSize() int
	// ReadPage copies the first length bytes of a page into dst.
	ReadPage(ctx context.Context, key cache.PageKey, length int, dst []byte, access cache.Access) (int, error)
	// PutBlock inserts the pages of a block that was just written.
	PutBlock(ctx context.Context, block uint64, data []byte, access cache.Access)
	// Prefetch loads pages of a block from fromPage on, ahead of a reader.
	Prefetch(ctx context.Context, block uint64, blockLen int, fromPage uint32, access cache.Access) error
}

// BlockWriter is the persistence store as the file system uses it: it
// writes new immutable blocks. store.Store satisfies it.
type BlockWriter interface {
	Put(ctx context.Context, id uint64, data []byte) error
	// Delete removes a block written behind whose content went stale
	// before any commit named it.
	Delete(ctx context.Context, id uint64) error
}

var (
	_ Metadata    = (*meta.Service)(nil)
	_ PageCache   = (*cache.Cache)(nil)
	_ BlockWriter = (store.Store)(nil)
)

// FS is a mounted file system.
type FS struct {
	raw       *fileSystem
	server    *fuse.Server
	served    chan struct{}
	unmountMu sync.Mutex
	unmounted bool
}

// Mount purges the orphans that a previous run left behind (no handle
// survives a restart), mounts the file system at cfg.Mountpoint and serves
// it until Unmount. It returns once the mount is ready.
func Mount(ctx context.Context, cfg Config, md Metadata, c PageCache, st BlockWriter) (*FS, error) {
	if nsBlock := int(md.BlockSize()); cfg.BlockSize == 0 {
		cfg.BlockSize = nsBlock
	} else if cfg.BlockSize != nsBlock {
		return nil, fmt.Errorf("fs: block size %d does not match the namespace's %d", cfg.BlockSize, nsBlock)
	}
	cfg.setDefaults()
	if c.PageSize() <= 0 || cfg.BlockSize%c.PageSize() != 0 {
		return nil, fmt.Errorf("fs: block size %d is not a multiple of the cache page size %d", cfg.BlockSize, c.PageSize())
	}
	mp, err := checkMountpoint(cfg.Mountpoint)
	if err != nil {
		return nil, err
	}
	cfg.Mountpoint = mp

	orphans, err := md.Orphans(ctx)
	if err != nil {
		return nil, fmt.Errorf("fs: list orphans: %w", err)
	}
	for _, ino := range orphans {
		// In a cluster an orphan may still be open on another node (Purge
		// keeps it then), or a node may not answer: the orphan stays for a
		// later purge (the last release, the leader's collector or the
		// next mount), and the mount goes on.
		if err := md.Purge(ctx, ino); err != nil {
			cfg.Logger.Warn("fs: orphan inode left for a later purge", "ino", ino, "err", err)
		}
	}
	if len(orphans) > 0 {
		cfg.Logger.Info("fs: purged orphan inodes", "count", len(orphans))
	}

	raw := newFileSystem(cfg, md, c, st)
	opts := &fuse.MountOptions{
		AllowOther:           true,
		Options:              []string{"default_permissions"},
		MaxBackground:        64,
		MaxWrite:             maxWrite,
		FsName:               "datenlord",
		Name:                 "datenlord",
		Debug:                cfg.Debug,
		EnableLocks:          false,
		EnableSymlinkCaching: false,
		DirectMountStrict:    true,
	}
	server, err := fuse.NewServer(raw, mp, opts)
	if err != nil {
		return nil, fmt.Errorf("fs: mount %s: %w", mp, err)
	}
	f := &FS{raw: raw, server: server, served: make(chan struct{})}
	go func() {
		defer close(f.served)
		server.Serve()
	}()
	if err := server.WaitMount(); err != nil {
		_ = server.Unmount()
		<-f.served
		return nil, fmt.Errorf("fs: mount %s: %w", mp, err)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(mp, &sfs); err != nil || sfs.Type != fuseSuperMagic {
		_ = f.Unmount(ctx)
		if err == nil {
			err = fmt.Errorf("file system type %#x is not FUSE", sfs.Type)
		}
		return nil, fmt.Errorf("fs: verify mount %s: %w", mp, err)
	}
	if err := setKernelReadahead(mp); err != nil { // readahead.go
		cfg.Logger.Debug("fs: kernel readahead left at its default", "mountpoint", mp, "err", err)
	}
	cfg.Logger.Info("fs: mounted", "mountpoint", mp, "block_size", cfg.BlockSize,
		"attr_timeout", cfg.AttrTimeout, "entry_timeout", cfg.EntryTimeout)
	return f, nil
}

const (
	fuseSuperMagic = 0x65735546
	// maxWrite is the largest FUSE write request.
	maxWrite = 1 << 20
)

// Mountpoint returns the absolute path the file system is mounted at.
func (f *FS) Mountpoint() string { return f.raw.cfg.Mountpoint }

// Flush writes every dirty file to the store and commits it, like fsync
// on every open file. It returns the first error.
func (f *FS) Flush(ctx context.Context) error { return f.raw.flushAll(ctx) }

// Unmount flushes every dirty file, unmounts and waits for the server to
// stop. When flushing fails it still unmounts, and returns the flush
// error. A busy mount point is retried briefly and then detached lazily.
func (f *FS) Unmount(ctx context.Context) error {
	f.unmountMu.Lock()
	defer f.unmountMu.Unlock()
	if f.unmounted {
		return nil
	}
	flushErr := f.raw.flushAll(ctx)
	purged := make(chan struct{})
	go func() { f.raw.purges.Wait(); close(purged) }()
	select {
	case <-purged:
	case <-ctx.Done(): // the orphans stay listed for the next mount
	}
	if flushErr != nil {
		f.raw.log.Error("fs: flush before unmount", "err", flushErr)
	}
	var err error
	select {
	case <-f.served:
		// Unmounted from outside already.
	default:
		deadline := time.Now().Add(2 * time.Second)
		for {
			err = f.server.Unmount()
			if err == nil || !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			f.raw.log.Warn("fs: unmount failed, detaching lazily", "mountpoint", f.Mountpoint(), "err", err)
			if derr := unix.Unmount(f.Mountpoint(), unix.MNT_DETACH); derr != nil {
				return errors.Join(flushErr, fmt.Errorf("fs: unmount %s: %w (lazy: %v)", f.Mountpoint(), err, derr))
			}
			err = nil
		}
	}
	select {
	case <-f.served:
	case <-ctx.Done():
		return errors.Join(flushErr, fmt.Errorf("fs: wait for server to stop: %w", ctx.Err()))
	}
	f.unmounted = true
	return flushErr
}

// Wait blocks until the file system is unmounted (also from outside, by
// umount(8)).
func (f *FS) Wait() { <-f.served }

// OldestOpenIndex returns the smallest metadata applied index at which a
// block map of a currently open file was loaded; ok is false when no file
// is open. Garbage freed at or below that index is referenced by no open
// file's cached block map, so the garbage collector may delete it.
func (f *FS) OldestOpenIndex() (index uint64, ok bool) { return f.raw.oldestOpenIndex() }

// InFlightBlocks calls fn for every block id that has been handed to a
// flush (and may be in the store) but whose commit has not finished: a
// store sweep must not delete these. A sweep is safe in this order: list
// the store, then call InFlightBlocks, then read meta.ReferencedBlocks (a
// block committed after the in-flight snapshot is referenced by then).
func (f *FS) InFlightBlocks(fn func(meta.BlockID)) { f.raw.ids.inFlight(fn) }
