// Package fstest mounts a complete datenlord file system for tests: a real
// metadata service, a real file:// store and a real page cache in temporary
// directories, served through a real FUSE mount. Tests of later layers
// (benchmarks, garbage collection, several nodes) reuse it.
//
// Mounting needs root and /dev/fuse; Start skips the test otherwise. Run
// mount tests sequentially: each holds a FUSE mount.
package fstest

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/fs"
	"github.com/datenlord/datenlord-go/meta"
	"github.com/datenlord/datenlord-go/store"
)

// Options configure a Harness. The zero value is usable.
type Options struct {
	// BlockSize is the namespace block size (0: 512 KiB).
	BlockSize int
	// PageSize is the cache page size (0: 64 KiB).
	PageSize int
	// CacheBytes bounds the memory cache (0: 64 MiB).
	CacheBytes int64
	// StoreDir is the store's directory (default: under the test's temp
	// dir), e.g. on a small tmpfs to provoke ENOSPC.
	StoreDir string
	// FS adjusts the file system config before each mount.
	FS func(*fs.Config)
	// Logger receives the logs of all parts (nil: discarded unless
	// DATENLORD_TEST_LOG is set, then stderr).
	Logger *slog.Logger
}

// Option changes Options.
type Option func(*Options)

// WithBlockSize sets the namespace block size.
func WithBlockSize(n int) Option { return func(o *Options) { o.BlockSize = n } }

// WithPageSize sets the cache page size.
func WithPageSize(n int) Option { return func(o *Options) { o.PageSize = n } }

// WithStoreDir puts the store in dir.
func WithStoreDir(dir string) Option { return func(o *Options) { o.StoreDir = dir } }

// WithFSConfig adjusts the file system config before each mount.
func WithFSConfig(fn func(*fs.Config)) Option { return func(o *Options) { o.FS = fn } }

// WithLogger sends the logs of all parts to l.
func WithLogger(l *slog.Logger) Option { return func(o *Options) { o.Logger = l } }

// Harness is one mounted file system and the parts under it.
type Harness struct {
	T    testing.TB
	Opts Options

	// Dir holds everything; MetaDir, StoreDir and Mountpoint are inside
	// it (StoreDir unless Options.StoreDir is set).
	Dir, MetaDir, StoreDir, Mountpoint string

	Meta  *meta.Service
	Store store.Store
	Cache *cache.Cache
	FS    *fs.FS
}

// Start mounts a fresh file system and unmounts it when the test ends. It
// skips the test when FUSE mounts are not possible here.
func Start(t testing.TB, opts ...Option) *Harness {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("SKIP: FUSE mount tests need root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skipf("SKIP: no /dev/fuse: %v", err)
	}
	h := &Harness{T: t}
	for _, o := range opts {
		o(&h.Opts)
	}
	if h.Opts.PageSize == 0 {
		h.Opts.PageSize = 64 << 10
	}
	if h.Opts.CacheBytes == 0 {
		h.Opts.CacheBytes = 64 << 20
	}
	if h.Opts.Logger == nil {
		if os.Getenv("DATENLORD_TEST_LOG") != "" {
			h.Opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		} else {
			h.Opts.Logger = slog.New(slog.DiscardHandler)
		}
	}
	h.Dir = t.TempDir()
	h.MetaDir = filepath.Join(h.Dir, "meta")
	h.StoreDir = h.Opts.StoreDir
	if h.StoreDir == "" {
		h.StoreDir = filepath.Join(h.Dir, "store")
	}
	h.Mountpoint = filepath.Join(h.Dir, "mnt")
	for _, d := range []string{h.MetaDir, h.StoreDir, h.Mountpoint} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatalf("fstest: %v", err)
		}
	}
	t.Cleanup(h.Stop)
	h.open()
	return h
}

// Path returns the path of name (slash separated) under the mount point.
func (h *Harness) Path(name ...string) string {
	return filepath.Join(append([]string{h.Mountpoint}, name...)...)
}

func (h *Harness) open() {
	t := h.T
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	h.Meta, err = meta.Open(ctx, meta.Config{
		Dir:             h.MetaDir,
		BlockSize:       uint32(h.Opts.BlockSize),
		ElectionTimeout: 50 * time.Millisecond,
		Logger:          h.Opts.Logger,
	})
	if err != nil {
		t.Fatalf("fstest: open meta: %v", err)
	}
	h.Store, err = store.Open(ctx, "file://"+h.StoreDir, store.Options{})
	if err != nil {
		t.Fatalf("fstest: open store: %v", err)
	}
	h.Cache, err = cache.New(cache.Config{
		PageSize: h.Opts.PageSize,
		MemBytes: h.Opts.CacheBytes,
		Logger:   h.Opts.Logger,
	}, h.Store)
	if err != nil {
		t.Fatalf("fstest: new cache: %v", err)
	}
	cfg := fs.Config{Mountpoint: h.Mountpoint, Logger: h.Opts.Logger}
	if h.Opts.FS != nil {
		h.Opts.FS(&cfg)
	}
	h.FS, err = fs.Mount(ctx, cfg, h.Meta, h.Cache, h.Store)
	if err != nil {
		t.Fatalf("fstest: mount: %v", err)
	}
}

// Stop unmounts and closes everything; it is safe to call twice. Errors
// fail the test.
func (h *Harness) Stop() {
	t := h.T
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if h.FS != nil {
		if err := h.FS.Unmount(ctx); err != nil {
			t.Errorf("fstest: unmount: %v", err)
		}
		h.FS = nil
	}
	if h.Cache != nil {
		if err := h.Cache.Close(); err != nil {
			t.Errorf("fstest: close cache: %v", err)
		}
		h.Cache = nil
	}
	if h.Store != nil {
		if err := h.Store.Close(); err != nil {
			t.Errorf("fstest: close store: %v", err)
		}
		h.Store = nil
	}
	if h.Meta != nil {
		if err := h.Meta.Close(); err != nil {
			t.Errorf("fstest: close meta: %v", err)
		}
		h.Meta = nil
	}
}

// Restart unmounts and closes everything cleanly, then reopens the same
// directories and mounts again: what was flushed before must still be
// there.
func (h *Harness) Restart() {
	h.T.Helper()
	h.Stop()
	h.open()
}
