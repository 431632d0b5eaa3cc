package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/iouring"
)

// envPrefix prefixes the environment variable of every flag:
// --cache-mem is also read from DATENLORD_CACHE_MEM.
const envPrefix = "DATENLORD_"

// Defaults of the serve flags (the embedded single-node configuration).
const (
	defaultDataDir         = "/var/lib/datenlord"
	defaultMount           = "/mnt/datenlord"
	defaultCacheMem        = 512 * mib
	defaultBlockSize       = 512 * kib
	defaultPageSize        = 64 * kib
	defaultDirtyLimit      = 256 * mib
	defaultAttrTimeout     = time.Second
	defaultEntryTimeout    = time.Second
	defaultShutdownTimeout = time.Minute
	defaultGCInterval      = 30 * time.Second
	defaultCacheDisk       = 10 * gib
	defaultIOEngine        = iouring.KindAuto
	defaultCachePolicy     = cache.PolicyAuto

	// pageAlign is the alignment of pages: O_DIRECT I/O and RDMA memory
	// regions want whole 4 KiB pages.
	pageAlign = 4 * kib
	// maxBlockSize bounds a block; a block is buffered whole while it is
	// written, and its length must fit meta.BlockRef.Len.
	maxBlockSize = 64 * mib
)

// serveConfig is the validated configuration of `datenlord-node serve`.
type serveConfig struct {
	DataDir   string
	Mount     string
	StoreURL  string
	CacheMem  int64
	BlockSize int64
	// BlockSizeSet is true when --block-size was given (flag or
	// environment). The block size is fixed when a data dir is first
	// formatted; without the flag an existing data dir keeps its own.
	BlockSizeSet    bool
	PageSize        int64
	DirtyLimit      int64
	LogLevel        slog.Level
	MetricsAddr     string
	AttrTimeout     time.Duration
	EntryTimeout    time.Duration
	ShutdownTimeout time.Duration
	GCInterval      time.Duration
	FuseDebug       bool
	// CacheDir holds the NVMe tier's page file; empty: no disk tier.
	CacheDir string
	// CacheDisk is the size of the NVMe tier's page file (with CacheDir).
	CacheDisk int64
	// CacheDiskSet is true when --cache-disk was given (flag or
	// environment): without --cache-dir that is a mistake worth an error.
	CacheDiskSet bool
	// IOEngine drives the NVMe tier: auto, uring or psync.
	IOEngine string
	// CachePolicy names the eviction policy of the memory and disk tiers.
	CachePolicy string
	// Cluster holds the membership flags (cluster.go).
	Cluster clusterConfig
	// Transport is --transport, the neighbor page transport (cache_cmd.go).
	Transport string
	// Interfaces holds the S3 and KV interface flags (interfaces.go).
	Interfaces ifaceConfig
}

// metaDir is where the metadata service keeps Raft and Badger.
func (c *serveConfig) metaDir() string { return filepath.Join(c.DataDir, "meta") }

// lockPath is the file serve flocks to own the data dir.
func (c *serveConfig) lockPath() string { return filepath.Join(c.DataDir, "LOCK") }

// logLevelValue is a pflag.Value accepting debug, info, warn or error.
type logLevelValue struct{ l *slog.Level }

// String returns the level name in lower case.
func (v logLevelValue) String() string {
	if v.l == nil {
		return "info"
	}
	return strings.ToLower(v.l.String())
}

// Set accepts debug, info, warn (or warning) and error, in any case.
func (v logLevelValue) Set(s string) error {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "debug":
		*v.l = slog.LevelDebug
	case "info":
		*v.l = slog.LevelInfo
	case "warn", "warning":
		*v.l = slog.LevelWarn
	case "error":
		*v.l = slog.LevelError
	default:
		return fmt.Errorf("invalid log level %q: want debug, info, warn or error", s)
	}
	return nil
}

// Type names the value type in help output.
func (v logLevelValue) Type() string { return "level" }

// addServeFlags defines the serve flags on fs, bound to c, with their
// defaults stored in c.
func addServeFlags(fs *pflag.FlagSet, c *serveConfig) {
	fs.StringVar(&c.DataDir, "data-dir", defaultDataDir, "directory for the metadata (Raft log, Badger) and, by default, the block store; created with mode 0700")
	fs.StringVar(&c.Mount, "mount", defaultMount, "directory to mount the file system on (must exist and not be a mount point)")
	fs.StringVar(&c.StoreURL, "store", "", "persistence store URL: file:///abs/path, or s3://BUCKET/PREFIX?endpoint=URL&region=R&timeout=D&retries=N (credentials from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) (default file://<data-dir>/store)")
	fs.Var(newSizeValue(&c.CacheMem, defaultCacheMem), "cache-mem", "memory cache size (units B, KiB, MiB, GiB, TiB; K/M/G/T are binary)")
	fs.Var(newSizeValue(&c.BlockSize, defaultBlockSize), "block-size", "size of the immutable blocks files are cut into (multiple of the page size)")
	fs.Var(newSizeValue(&c.PageSize, defaultPageSize), "page-size", "cache page size (multiple of 4KiB that divides the block size)")
	fs.Var(newSizeValue(&c.DirtyLimit, defaultDirtyLimit), "dirty-limit", "bytes of unflushed writes on this node before writers flush first")
	c.LogLevel = slog.LevelInfo
	fs.Var(logLevelValue{&c.LogLevel}, "log-level", "log level: debug, info, warn or error")
	fs.StringVar(&c.MetricsAddr, "metrics", "", "address for /metrics, /healthz, /readyz and /debug/pprof, e.g. 127.0.0.1:9100 (empty: off)")
	fs.DurationVar(&c.AttrTimeout, "attr-timeout", defaultAttrTimeout, "how long the kernel may cache file attributes")
	fs.DurationVar(&c.EntryTimeout, "entry-timeout", defaultEntryTimeout, "how long the kernel may cache directory entries")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", defaultShutdownTimeout, "how long to wait for dirty data to flush and the unmount to finish on SIGINT/SIGTERM")
	fs.DurationVar(&c.GCInterval, "gc-interval", defaultGCInterval, "how often the garbage collector deletes blocks no file references any more")
	fs.BoolVar(&c.FuseDebug, "fuse-debug", false, "log every FUSE request and reply (very verbose)")
	fs.StringVar(&c.CacheDir, "cache-dir", "", "directory of the local NVMe cache tier (a preallocated pages.dat, kept warm across restarts; empty: no disk tier)")
	fs.Var(newSizeValue(&c.CacheDisk, defaultCacheDisk), "cache-disk", "size of the NVMe cache tier's file in --cache-dir (needs --cache-dir)")
	fs.StringVar(&c.IOEngine, "io-engine", defaultIOEngine, "I/O engine of the NVMe cache tier: auto (io_uring where the kernel allows, else pread/pwrite), uring, uring-sqpoll (io_uring with a kernel thread polling submissions: fewer system calls, one CPU kept busy while I/O flows) or psync")
	fs.StringVar(&c.CachePolicy, "cache-policy", defaultCachePolicy, "eviction policy of the memory and NVMe cache tiers: "+strings.Join(cache.PolicyNames(), ", ")+" (auto: scan-resistant, sequential reads do not flush the random working set)")
	addClusterFlags(fs, &c.Cluster)
	addTransportFlag(fs, &c.Transport)
	addInterfaceFlags(fs, &c.Interfaces)
}

// envName returns the environment variable of a flag: data-dir ->
// DATENLORD_DATA_DIR.
func envName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// applyEnv sets every flag that was not given on the command line from its
// DATENLORD_* environment variable, if set, so that the precedence is
// flag > environment > default. Afterwards a flag is Changed when it was
// set either way.
func applyEnv(fs *pflag.FlagSet, lookupEnv func(string) (string, bool)) error {
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "help" {
			return
		}
		name := envName(f.Name)
		v, ok := lookupEnv(name)
		if !ok {
			return
		}
		if err := f.Value.Set(v); err != nil {
			errs = append(errs, fmt.Errorf("invalid value %q in environment variable %s (--%s): %w", v, name, f.Name, err))
			return
		}
		f.Changed = true // set, though not on the command line
	})
	return errors.Join(errs...)
}

// validate checks the settings, makes paths absolute and fills in derived
// defaults. Every error names the flag so the user knows what to fix.
func (c *serveConfig) validate() error {
	var err error
	if c.DataDir == "" {
		return errors.New("--data-dir must not be empty")
	}
	if c.DataDir, err = filepath.Abs(c.DataDir); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	if c.Mount == "" {
		return errors.New("--mount must not be empty")
	}
	if c.Mount, err = filepath.Abs(c.Mount); err != nil {
		return fmt.Errorf("--mount: %w", err)
	}
	if within(c.DataDir, c.Mount) {
		return fmt.Errorf("--data-dir %s is inside the mount point %s: the file system would store itself in itself", c.DataDir, c.Mount)
	}
	if c.StoreURL == "" {
		c.StoreURL = "file://" + filepath.Join(c.DataDir, "store")
	}
	u, err := url.Parse(c.StoreURL)
	if err != nil {
		return fmt.Errorf("--store %q: %w", c.StoreURL, err)
	}
	if u.Scheme == "file" {
		if u.Host != "" || !filepath.IsAbs(u.Path) {
			return fmt.Errorf("--store %q: a file store URL needs an absolute path, as in file:///var/lib/datenlord/store", c.StoreURL)
		}
		if within(filepath.Clean(u.Path), c.Mount) {
			return fmt.Errorf("--store %s is inside the mount point %s: the file system would store itself in itself", c.StoreURL, c.Mount)
		}
	}

	if c.PageSize <= 0 || c.PageSize%pageAlign != 0 {
		return fmt.Errorf("--page-size %s: must be a positive multiple of 4KiB", formatSize(c.PageSize))
	}
	if c.BlockSize <= 0 || c.BlockSize > maxBlockSize {
		return fmt.Errorf("--block-size %s: must be between 4KiB and %s", formatSize(c.BlockSize), formatSize(maxBlockSize))
	}
	if c.BlockSize%c.PageSize != 0 {
		return fmt.Errorf("--page-size %s does not divide --block-size %s: the block size must be a whole number of pages", formatSize(c.PageSize), formatSize(c.BlockSize))
	}
	if c.CacheMem < c.PageSize {
		return fmt.Errorf("--cache-mem %s: must hold at least one page (--page-size %s)", formatSize(c.CacheMem), formatSize(c.PageSize))
	}
	if c.DirtyLimit < c.BlockSize {
		return fmt.Errorf("--dirty-limit %s: must hold at least one block (--block-size %s)", formatSize(c.DirtyLimit), formatSize(c.BlockSize))
	}
	if c.AttrTimeout < 0 {
		return fmt.Errorf("--attr-timeout %s: must not be negative", c.AttrTimeout)
	}
	if c.EntryTimeout < 0 {
		return fmt.Errorf("--entry-timeout %s: must not be negative", c.EntryTimeout)
	}
	if c.ShutdownTimeout <= 0 {
		return fmt.Errorf("--shutdown-timeout %s: must be positive", c.ShutdownTimeout)
	}
	if c.GCInterval <= 0 {
		return fmt.Errorf("--gc-interval %s: must be positive", c.GCInterval)
	}
	if c.MetricsAddr != "" {
		if _, _, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			return fmt.Errorf("--metrics %q: want host:port, such as 127.0.0.1:9100: %w", c.MetricsAddr, err)
		}
	}
	if err := c.Interfaces.validate(); err != nil {
		return err
	}
	return c.validateCache()
}

// validateCache checks the cache tier flags: --cache-dir, --cache-disk,
// --io-engine and --cache-policy.
func (c *serveConfig) validateCache() error {
	if _, err := cache.NewPolicyFactory(c.CachePolicy); err != nil {
		return fmt.Errorf("--cache-policy: %w", err)
	}
	c.CachePolicy = strings.ToLower(strings.TrimSpace(c.CachePolicy))
	switch c.IOEngine = strings.ToLower(strings.TrimSpace(c.IOEngine)); c.IOEngine {
	case iouring.KindAuto, iouring.KindUring, iouring.KindUringSQPoll, iouring.KindPsync:
	default:
		return fmt.Errorf("--io-engine %q: want %s, %s, %s or %s", c.IOEngine, iouring.KindAuto, iouring.KindUring, iouring.KindUringSQPoll, iouring.KindPsync)
	}
	if c.CacheDir == "" {
		if c.CacheDiskSet {
			return fmt.Errorf("--cache-disk %s needs --cache-dir: name the directory of the NVMe cache tier", formatSize(c.CacheDisk))
		}
		return nil
	}
	var err error
	if c.CacheDir, err = filepath.Abs(c.CacheDir); err != nil {
		return fmt.Errorf("--cache-dir: %w", err)
	}
	if within(c.CacheDir, c.Mount) {
		return fmt.Errorf("--cache-dir %s is inside the mount point %s: the cache would store itself in the file system it caches", c.CacheDir, c.Mount)
	}
	// pages.dat holds a 4 KiB superblock, then one 4 KiB header and one
	// page per slot.
	if minDisk := pageAlign + pageAlign + c.PageSize; c.CacheDisk < minDisk {
		return fmt.Errorf("--cache-disk %s: must hold at least one page (at least %s with --page-size %s)", formatSize(c.CacheDisk), formatSize(minDisk), formatSize(c.PageSize))
	}
	return nil
}

// within reports whether path is dir or below it (both clean and absolute).
func within(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}
