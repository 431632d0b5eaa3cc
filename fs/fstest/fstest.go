// Package fstest mounts a complete datenlord file system for tests: a real
// metadata service, a real store and a real page cache in temporary
// directories, served through a real FUSE mount. Tests of later layers
// (benchmarks, garbage collection, several nodes) reuse it.
//
// Mounting needs root and /dev/fuse; Start skips the test otherwise. Run
// mount tests sequentially: each holds a FUSE mount.
//
// # Stores
//
// By default the store is a file:// directory under the test's temp dir.
// WithStoreURL mounts on any store URL (s3://..., with WithS3Credentials),
// and WithS3 on a fresh prefix of a running s3test server.
//
// The environment variable DATENLORD_TEST_STORE=s3 switches every Start
// that names no store of its own (no WithStoreDir, WithStoreURL or WithS3)
// to S3: the harness starts its own versitygw through store/s3test (about
// 0.1 s, so one server per harness rather than one per process: there is no
// package-level state to share or to clean up) and mounts on it; the
// server lives as long as the test and survives Harness.Restart.
// ci/test.sh runs the FUSE suites a second time this way.
//
// # Disk tier
//
// WithDiskTier adds the NVMe tier (cache.DiskTier) behind the memory tier,
// with the given I/O engine; its directory survives Restart, so a
// restarted harness starts with a warm disk tier.
package fstest

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/fs"
	"github.com/datenlord/datenlord-go/meta"
	"github.com/datenlord/datenlord-go/store"
	"github.com/datenlord/datenlord-go/store/s3test"
)

// EnvStore names the environment variable that picks the default store of
// Start: "file" (or unset) or "s3".
const EnvStore = "DATENLORD_TEST_STORE"

// Options configure a Harness. The zero value is usable.
type Options struct {
	// BlockSize is the namespace block size (0: 512 KiB).
	BlockSize int
	// PageSize is the cache page size (0: 64 KiB).
	PageSize int
	// CacheBytes bounds the memory cache (0: 64 MiB).
	CacheBytes int64
	// StoreDir is the store's directory (default: under the test's temp
	// dir), e.g. on a small tmpfs to provoke ENOSPC. Setting it pins the
	// file:// store whatever DATENLORD_TEST_STORE says.
	StoreDir string
	// StoreURL, when set, is the store (e.g. s3://BUCKET/PREFIX?...)
	// instead of a file:// directory.
	StoreURL string
	// StoreOptions are passed to store.Open (S3 credentials, limits).
	StoreOptions store.Options
	// S3 and S3Params, when S3 is set, put the store on a fresh prefix of
	// that server (the harness sets StoreURL and the credentials).
	S3       *s3test.Server
	S3Params []string
	// DiskDir, when set, adds the NVMe tier with its page file in DiskDir,
	// DiskBytes large (0: 64 MiB), on DiskEngine ("auto", "uring" or
	// "psync"; empty: auto).
	DiskDir    string
	DiskBytes  int64
	DiskEngine string
	// CachePolicy names the eviction policy of the memory and disk tiers
	// (cache.PolicyNames; empty: each tier's default).
	CachePolicy string
	// Registerer, when set, receives the store and cache metrics (the
	// same collectors again after a Restart). The FUSE metrics are set
	// through FS (fs.Config.Registerer).
	Registerer prometheus.Registerer
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

// WithCacheBytes bounds the memory tier.
func WithCacheBytes(n int64) Option { return func(o *Options) { o.CacheBytes = n } }

// WithRegisterer registers the store and cache metrics on reg.
func WithRegisterer(reg prometheus.Registerer) Option { return func(o *Options) { o.Registerer = reg } }

// WithStoreDir puts the store in dir.
func WithStoreDir(dir string) Option { return func(o *Options) { o.StoreDir = dir } }

// WithStoreURL mounts on the store named by url, such as
// s3://BUCKET/PREFIX?endpoint=...; see WithS3Credentials.
func WithStoreURL(url string) Option { return func(o *Options) { o.StoreURL = url } }

// WithS3Credentials sets the access key pair of an s3:// store (instead of
// the AWS SDK's default chain).
func WithS3Credentials(accessKey, secretKey string) Option {
	return func(o *Options) {
		o.StoreOptions.S3.AccessKeyID, o.StoreOptions.S3.SecretAccessKey = accessKey, secretKey
	}
}

// WithS3 mounts on a fresh prefix of srv with its credentials; params are
// extra URL parameters such as "timeout=1s", "retries=2". The test keeps
// control of srv (Stop and Restart it to simulate an outage).
func WithS3(srv *s3test.Server, params ...string) Option {
	return func(o *Options) { o.S3, o.S3Params = srv, params }
}

// WithDiskTier adds the NVMe tier: a page file of bytes in dir (kept
// across Restart), on the I/O engine named by engine (auto, uring or
// psync).
func WithDiskTier(dir string, bytes int64, engine string) Option {
	return func(o *Options) { o.DiskDir, o.DiskBytes, o.DiskEngine = dir, bytes, engine }
}

// WithCachePolicy sets the eviction policy of the memory and disk tiers by
// name (see cache.PolicyNames).
func WithCachePolicy(name string) Option { return func(o *Options) { o.CachePolicy = name } }

// WithFSConfig adjusts the file system config before each mount.
func WithFSConfig(fn func(*fs.Config)) Option { return func(o *Options) { o.FS = fn } }

// WithLogger sends the logs of all parts to l.
func WithLogger(l *slog.Logger) Option { return func(o *Options) { o.Logger = l } }

// Harness is one mounted file system and the parts under it.
type Harness struct {
	T    testing.TB
	Opts Options

	// Dir holds everything; MetaDir, StoreDir and Mountpoint are inside
	// it (StoreDir unless Options.StoreDir is set). StoreDir is empty when
	// the store is not a file:// directory.
	Dir, MetaDir, StoreDir, Mountpoint string
	// StoreURL is the URL the store is opened with.
	StoreURL string
	// S3 is the S3 server under the store, if any: the one given by
	// WithS3, or the one the harness started for DATENLORD_TEST_STORE=s3.
	S3 *s3test.Server

	Meta  *meta.Service
	Store store.Store
	Cache *cache.Cache
	// Disk is the NVMe tier (nil without WithDiskTier); Cache owns it.
	Disk *cache.DiskTier
	FS   *fs.FS
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
	h.Mountpoint = filepath.Join(h.Dir, "mnt")
	dirs := []string{h.MetaDir, h.Mountpoint}
	h.chooseStore()
	if h.StoreDir != "" {
		dirs = append(dirs, h.StoreDir)
	}
	if h.Opts.DiskDir != "" && h.Opts.DiskBytes == 0 {
		h.Opts.DiskBytes = 64 << 20
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatalf("fstest: %v", err)
		}
	}
	// Registered after s3test.Start's cleanup, so it runs before it: the
	// file system is unmounted and flushed before its S3 server goes.
	t.Cleanup(h.Stop)
	h.open()
	return h
}

// chooseStore sets StoreURL (and StoreDir for a file:// store) from the
// options and DATENLORD_TEST_STORE, starting an S3 server if that asks
// for one.
func (h *Harness) chooseStore() {
	t := h.T
	t.Helper()
	switch {
	case h.Opts.StoreURL != "":
		h.StoreURL = h.Opts.StoreURL
		return
	case h.Opts.S3 != nil:
		h.useS3(h.Opts.S3)
		return
	case h.Opts.StoreDir != "":
		h.StoreDir = h.Opts.StoreDir
		h.StoreURL = "file://" + h.StoreDir
		return
	}
	switch kind := os.Getenv(EnvStore); kind {
	case "", "file":
		h.StoreDir = filepath.Join(h.Dir, "store")
		h.StoreURL = "file://" + h.StoreDir
	case "s3":
		start := time.Now()
		srv := s3test.Start(t)
		t.Logf("fstest: %s=s3: versitygw at %s started in %s", EnvStore, srv.Endpoint, time.Since(start).Round(time.Millisecond))
		h.useS3(srv)
	default:
		t.Fatalf("fstest: %s=%q: want file or s3", EnvStore, kind)
	}
}

// useS3 puts the store on a fresh prefix of srv.
func (h *Harness) useS3(srv *s3test.Server) {
	h.S3 = srv
	name := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '-'
	}, h.T.Name())
	// The temp dir's base name is unique per harness, so two harnesses of
	// one test (or of one server) never share a prefix.
	h.StoreURL = srv.URL("fstest/"+name+"/"+filepath.Base(h.Dir), h.Opts.S3Params...)
	h.Opts.StoreOptions.S3.AccessKeyID = srv.AccessKey
	h.Opts.StoreOptions.S3.SecretAccessKey = srv.SecretKey
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
	sopts := h.Opts.StoreOptions
	if sopts.Logger == nil {
		sopts.Logger = h.Opts.Logger
	}
	if sopts.Registerer == nil {
		sopts.Registerer = h.Opts.Registerer
	}
	h.Store, err = store.Open(ctx, h.StoreURL, sopts)
	if err != nil {
		t.Fatalf("fstest: open store %s: %v", h.StoreURL, err)
	}
	var policy func() cache.Policy
	if h.Opts.CachePolicy != "" {
		if policy, err = cache.NewPolicyFactory(h.Opts.CachePolicy); err != nil {
			t.Fatalf("fstest: %v", err)
		}
	}
	var extra []cache.Tier
	if h.Opts.DiskDir != "" {
		h.Disk, err = cache.NewDiskTier(ctx, cache.DiskConfig{
			Dir:        h.Opts.DiskDir,
			Bytes:      h.Opts.DiskBytes,
			PageSize:   h.Opts.PageSize,
			EngineKind: h.Opts.DiskEngine,
			Policy:     policy,
			Registerer: h.Opts.Registerer,
			Logger:     h.Opts.Logger,
		})
		if err != nil {
			t.Fatalf("fstest: open disk tier in %s: %v", h.Opts.DiskDir, err)
		}
		extra = append(extra, h.Disk)
	}
	h.Cache, err = cache.New(cache.Config{
		PageSize:     h.Opts.PageSize,
		MemBytes:     h.Opts.CacheBytes,
		Logger:       h.Opts.Logger,
		MemoryPolicy: policy,
		Registerer:   h.Opts.Registerer,
	}, h.Store, extra...)
	if err != nil {
		if h.Disk != nil {
			_ = h.Disk.Close()
			h.Disk = nil
		}
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
		if err := h.Cache.Close(); err != nil { // closes the disk tier too
			t.Errorf("fstest: close cache: %v", err)
		}
		h.Cache = nil
		h.Disk = nil
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
