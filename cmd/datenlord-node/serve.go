package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/cobra"

	"github.com/datenlord/datenlord-go/bench/tiers"
	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/fs"
	"github.com/datenlord/datenlord-go/gc"
	"github.com/datenlord/datenlord-go/kv"
	"github.com/datenlord/datenlord-go/meta"
	"github.com/datenlord/datenlord-go/store"
	"github.com/datenlord/datenlord-go/tcpfallback"
)

// newServeCmd returns the `serve` command.
func newServeCmd(s streams) *cobra.Command {
	cfg := &serveConfig{}
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Mount the file system and serve it until SIGINT or SIGTERM",
		Long: `serve runs a node: it opens the block store and the metadata service in the
data dir, mounts the file system through FUSE and serves it until SIGINT or
SIGTERM (or until the file system is unmounted from outside). On a signal it
flushes dirty data, unmounts and exits 0; a second signal exits at once.

fsync(2) and close(2) on the mount return only once the data is durable in the
store and its metadata is committed to the Raft log.

Blocks persist in --store: a local directory (file:///abs/path, the default
file://<data-dir>/store) or an S3 bucket (s3://BUCKET/PREFIX?endpoint=URL&
region=R&timeout=D&retries=N&concurrency=N&part-size=SIZE; path-style, any
S3-compatible server). S3 credentials come from AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY (or the AWS SDK's other usual sources), never the URL.

Pages are cached in memory (--cache-mem) and, with --cache-dir, in a local
NVMe tier (--cache-disk, default 10GiB) that stays warm across restarts, read
and written through io_uring (--io-engine). --cache-policy picks the eviction
policy of both tiers.

With --peers (the bootstrap voters, the same list on every node) or --join
(any member of a running cluster), the node is part of a metadata cluster:
Raft, forwarded writes, linearizable reads and membership travel over the
authenticated node transport on --listen (default 127.0.0.1:7070), with the
secret from --cluster-secret-file or DATENLORD_CLUSTER_SECRET. All nodes must
share the block store (--store). Without either flag the node is alone, as
before, and listens on no port. See "datenlord-node cluster --help".

Every flag can also be set as DATENLORD_<FLAG> in the environment (dashes
become underscores: DATENLORD_CACHE_MEM=1GiB); flags win over the environment.`,
		Example: `  # Serve with the defaults: data in /var/lib/datenlord, mounted at /mnt/datenlord
  datenlord-node serve

  # Another data dir and mount point, a 2 GiB memory cache and metrics on port 9100
  datenlord-node serve --data-dir /srv/datenlord --mount /mnt/dl --cache-mem 2GiB --metrics 127.0.0.1:9100

  # Keep blocks in a separate directory, and log at debug level
  datenlord-node serve --store file:///srv/blocks --log-level debug

  # Blocks in an S3 bucket (here a local versitygw), with a 100 GiB NVMe cache tier
  AWS_ACCESS_KEY_ID=KEY AWS_SECRET_ACCESS_KEY=SECRET datenlord-node serve \
    --store 's3://datenlord/node1?endpoint=http://127.0.0.1:7070&region=us-east-1' \
    --cache-dir /nvme/datenlord-cache --cache-disk 100GiB --io-engine uring --cache-policy s3fifo

  # The same settings from the environment
  DATENLORD_DATA_DIR=/srv/datenlord DATENLORD_MOUNT=/mnt/dl datenlord-node serve

  # One node of a three-node cluster (run the same on n2 and n3 with their own
  # --node-id, --listen, data dir and mount point), sharing one block store
  datenlord-node serve --node-id n1 --listen 127.0.0.1:7071 \
    --peers n1=127.0.0.1:7071,n2=127.0.0.1:7072,n3=127.0.0.1:7073 \
    --cluster-secret-file /etc/datenlord/secret --store file:///srv/shared-blocks \
    --data-dir /srv/n1 --mount /mnt/n1

  # A fourth node joins the running cluster as a non-voter
  datenlord-node serve --node-id n4 --listen 127.0.0.1:7074 --join 127.0.0.1:7071 \
    --cluster-secret-file /etc/datenlord/secret --store file:///srv/shared-blocks \
    --data-dir /srv/n4 --mount /mnt/n4`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd.Flags(), s.LookupEnv); err != nil {
				return err
			}
			cfg.BlockSizeSet = cmd.Flags().Changed("block-size")
			cfg.CacheDiskSet = cmd.Flags().Changed("cache-disk")
			if err := cfg.validate(); err != nil {
				return &usageError{cmd: cmd, err: err}
			}
			if err := cfg.Cluster.validate(s.LookupEnv); err != nil {
				return &usageError{cmd: cmd, err: err}
			}
			logger := slog.New(slog.NewTextHandler(s.Stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
			// Libraries that log through the default logger follow --log-level.
			slog.SetDefault(logger)
			return runServe(cmd.Context(), *cfg, logger)
		},
	}
	addServeFlags(cmd.Flags(), cfg)
	cmd.Flags().SortFlags = false
	return cmd
}

// closer is one step of the shutdown sequence.
type closer struct {
	name string
	fn   func() error
}

// closers releases what start-up acquired, newest first, so that a
// component is closed before what it depends on.
type closers []closer

func (c *closers) push(name string, fn func() error) { *c = append(*c, closer{name, fn}) }

// closeAll runs every step even if one fails and returns the errors joined.
func (c *closers) closeAll(logger *slog.Logger) error {
	var errs []error
	for i := len(*c) - 1; i >= 0; i-- {
		step := (*c)[i]
		logger.Debug("closing", "component", step.name)
		if err := step.fn(); err != nil {
			logger.Error("close failed", "component", step.name, "err", err)
			errs = append(errs, fmt.Errorf("close %s: %w", step.name, err))
		}
	}
	*c = nil
	return errors.Join(errs...)
}

// runServe starts the node described by cfg (already validated) and serves
// until a signal or an external unmount. It returns nil after a clean
// shutdown.
func runServe(parent context.Context, cfg serveConfig, logger *slog.Logger) (err error) {
	if parent == nil {
		parent = context.Background()
	}
	// The first SIGINT/SIGTERM cancels ctx: start-up is aborted, or the
	// served file system is shut down. A second one exits at once.
	ctx, cancel := context.WithCancel(parent)
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	stopSignals := make(chan struct{})
	defer close(stopSignals)
	go watchSignals(sigs, stopSignals, cancel, logger)

	var cl closers
	defer func() {
		if cerr := cl.closeAll(logger); cerr != nil && err == nil {
			err = cerr
		}
	}()

	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	lock, err := lockDataDir(cfg.DataDir, cfg.lockPath())
	if err != nil {
		return err
	}
	cl.push("data dir lock", lock.Close)
	if err := checkMountpoint(cfg.Mount); err != nil {
		return err
	}

	// Metrics come first so that the components can register on the
	// registry, and so that /healthz answers during a slow start.
	var reg prometheus.Registerer // stays a nil interface when metrics are off
	var ops *opsServer
	if cfg.MetricsAddr != "" {
		r := newRegistry(currentBuild())
		reg = r
		if ops, err = startOpsServer(cfg.MetricsAddr, r, logger); err != nil {
			return err
		}
		cl.push("metrics server", ops.Close)
	}

	st, err := store.Open(ctx, cfg.StoreURL, store.Options{Registerer: reg})
	if err != nil {
		return interrupted(ctx, fmt.Errorf("open store %s: %w", cfg.StoreURL, err))
	}
	cl.push("store", st.Close)
	if err := st.Check(ctx); err != nil {
		return interrupted(ctx, fmt.Errorf("store %s is not usable (is it writable?): %w", st, err))
	}

	var formatBlockSize uint32 // 0: the data dir's own, or the default for a new one
	if cfg.BlockSizeSet {
		formatBlockSize = uint32(cfg.BlockSize)
	}
	// In a cluster (cluster.go) the node transport carries Raft, the
	// forwarded writes and reads, and membership; the notifier turns
	// other nodes' changes into kernel cache invalidations once mounted.
	var tr meta.Transport // stays a nil interface alone
	var onChange func(origin string, changes []meta.Change)
	notifier := fs.NewNotifier(cfg.Cluster.NodeID, logger.With("component", "fs"))
	cl.push("notifier", func() error { notifier.Close(); return nil })
	if cfg.Cluster.clustered() {
		onChange = notifier.OnChange
		t, err := startTransport(ctx, cfg.Cluster, reg, logger.With("component", "transport"))
		if err != nil {
			return interrupted(ctx, err)
		}
		cl.push("node transport", t.Close)
		tr = t
		logger.Info("node transport listening", "node_id", cfg.Cluster.NodeID, "listen", cfg.Cluster.Listen, "advertise", t.Addr(),
			"peers", cfg.Cluster.PeersFlag, "join", cfg.Cluster.Join, "voter", cfg.Cluster.Voter)
	}
	md, err := meta.Open(ctx, meta.Config{
		Dir:       cfg.metaDir(),
		NodeID:    cfg.Cluster.NodeID,
		BindAddr:  "127.0.0.1:0",
		BlockSize: formatBlockSize,
		Logger:    logger.With("component", "meta"),
		Transport: tr,
		Peers:     cfg.Cluster.peers(),
		Join:      cfg.Cluster.Join,
		Voter:     cfg.Cluster.Voter,
		OnChange:  onChange,
		KV:        kv.NewMachine(), // always: the KV keyspace is replicated whether or not --kv-listen serves it
	})
	if errors.Is(err, meta.ErrDataDirInUse) {
		return errDataDirInUse(cfg.DataDir, 0)
	}
	if err != nil {
		return interrupted(ctx, fmt.Errorf("open metadata in %s: %w", cfg.metaDir(), err))
	}
	cl.push("metadata", md.Close)
	cfg.BlockSize = int64(md.BlockSize())
	if cfg.BlockSize%cfg.PageSize != 0 {
		return fmt.Errorf("--page-size %s does not divide the block size %s that data dir %s was formatted with", formatSize(cfg.PageSize), formatSize(cfg.BlockSize), cfg.DataDir)
	}

	// In a cluster the neighbor tier (cache_cmd.go) makes the members'
	// memory one page cache, behind the local tiers.
	var neighbor []cache.Tier
	var nb *cache.NeighborTier
	serveArena := func(*cache.Cache) {} // RDMA: peers READ this node's arena
	nodeTr, clustered := tr.(*tcpfallback.Transport)
	if clustered {
		var stopMembers func()
		nb, stopMembers, serveArena, err = startNeighbor(nodeTr, md, cfg.Cluster.NodeID, cfg.Transport, int(cfg.PageSize), int(cfg.BlockSize), reg, logger.With("component", "cache"))
		if err != nil {
			return err
		}
		cl.push("cache membership", func() error { stopMembers(); return nil })
		neighbor = append(neighbor, nb)
	} else if _, err := neighborTransportName(cfg.Transport); err != nil {
		return err
	}
	c, err := openCache(ctx, cfg, st, reg, logger.With("component", "cache"), neighbor...)
	if err != nil {
		return interrupted(ctx, err)
	}
	cl.push("cache", c.Close) // closes the disk and neighbor tiers too
	if nb != nil {
		if err := serveNeighbor(nodeTr, nb, c, md); err != nil {
			return err
		}
		serveArena(c)
		// `bench tiers --addr` reads this node's pages and times a raw
		// ping-pong to its host.
		benchOps := tiers.ServeNodeOps(nodeTr, c, cfg.Cluster.NodeID, int(cfg.BlockSize), cfg.Cluster.Listen, logger.With("component", "bench"))
		cl.push("bench ops", func() error { benchOps.Close(); return nil })
	}

	fsys, err := fs.Mount(ctx, fs.Config{
		Mountpoint:   cfg.Mount,
		BlockSize:    int(cfg.BlockSize),
		DirtyLimit:   cfg.DirtyLimit,
		AttrTimeout:  kernelCacheTimeout(cfg.AttrTimeout),
		EntryTimeout: kernelCacheTimeout(cfg.EntryTimeout),
		Logger:       logger.With("component", "fs"),
		Debug:        cfg.FuseDebug,
		Registerer:   reg,
	}, md, c, st)
	if err != nil {
		return interrupted(ctx, fmt.Errorf("mount %s: %w", cfg.Mount, err))
	}
	// Flushes and unmounts once: on a signal, after an external unmount,
	// or when start-up fails from here on.
	unmount := sync.OnceValue(func() error {
		uctx, ucancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
		defer ucancel()
		if err := fsys.Unmount(uctx); err != nil {
			return fmt.Errorf("flush and unmount %s: %w", cfg.Mount, err)
		}
		return nil
	})
	cl.push("file system", unmount)
	notifier.Attach(fsys)
	md.SetLocalPins(fsys)

	// Background services that need the mounted file system, the metadata
	// and the store start here, and cl stops them after the unmount below
	// and before the metadata closes. The block garbage collector takes its
	// pins (open block maps, blocks of flushes in flight) from the mount.
	gcCfg := gc.Config{Interval: cfg.GCInterval, Registerer: reg, Logger: logger}
	if cfg.Cluster.clustered() {
		gcCfg.Cluster = md // only the leader collects, with every node's pins
	}
	collector, err := gc.New(gcCfg, md, st, c, fsys)
	if err != nil {
		return fmt.Errorf("create garbage collector: %w", err)
	}
	gcCtx, gcStop := context.WithCancel(context.Background())
	gcDone := make(chan struct{})
	go func() {
		defer close(gcDone)
		collector.Run(gcCtx)
	}()
	cl.push("gc", func() error {
		gcStop()
		<-gcDone
		return nil
	})

	// The S3 gateway and the KV server (interfaces.go) serve from the
	// metadata, the cache, the store and the mount; they stop before the
	// unmount flushes, so no request is half served after it.
	stopIfaces, err := startInterfaces(ctx, cfg.Interfaces, ifaceDeps{
		Meta: md, Cache: c, Store: st, FS: fsys, Transport: nodeTr, NodeID: cfg.Cluster.NodeID,
		Registerer: reg, Logger: logger,
	})
	if err != nil {
		return interrupted(ctx, err)
	}
	stopIfaces = sync.OnceValue(stopIfaces)
	cl.push("client interfaces", stopIfaces)

	unmounted := make(chan struct{})
	go func() {
		fsys.Wait()
		close(unmounted)
	}()
	if ops != nil {
		ops.SetReady(true)
	}
	logger.Info("mounted at "+cfg.Mount,
		"data_dir", cfg.DataDir, "store", st.String(),
		"cache_mem", formatSize(cfg.CacheMem), "block_size", formatSize(cfg.BlockSize),
		"page_size", formatSize(cfg.PageSize), "dirty_limit", formatSize(cfg.DirtyLimit),
		"cache_policy", cfg.CachePolicy, "cache_dir", cfg.CacheDir,
		"attr_timeout", cfg.AttrTimeout, "entry_timeout", cfg.EntryTimeout, "gc_interval", cfg.GCInterval,
		"metrics", cfg.MetricsAddr, "version", version)

	select {
	case <-ctx.Done():
		if ops != nil {
			ops.SetReady(false)
		}
		if err := stopIfaces(); err != nil {
			logger.Error("stop client interfaces", "err", err)
		}
		logger.Info("flushing and unmounting", "mount", cfg.Mount, "timeout", cfg.ShutdownTimeout)
		if err := unmount(); err != nil {
			return err // closeAll still closes the rest
		}
		logger.Info("unmounted", "mount", cfg.Mount)
	case <-unmounted:
		if ops != nil {
			ops.SetReady(false)
		}
		logger.Info("file system was unmounted from outside; shutting down", "mount", cfg.Mount)
	}
	if err := cl.closeAll(logger); err != nil {
		return err
	}
	logger.Info("stopped")
	return nil
}

// openCache creates the page cache: the memory tier and, with --cache-dir,
// the NVMe tier behind it, both with the --cache-policy policy. The
// returned cache owns the disk tier: Cache.Close closes it.
// neighbor (the neighbor tier, in a cluster) goes after the local tiers.
func openCache(ctx context.Context, cfg serveConfig, st store.Store, reg prometheus.Registerer, logger *slog.Logger, neighbor ...cache.Tier) (*cache.Cache, error) {
	policy, err := cache.NewPolicyFactory(cfg.CachePolicy)
	if err != nil {
		return nil, fmt.Errorf("--cache-policy: %w", err)
	}
	var extra []cache.Tier
	if cfg.CacheDir != "" {
		disk, err := cache.NewDiskTier(ctx, cache.DiskConfig{
			Dir:        cfg.CacheDir,
			Bytes:      cfg.CacheDisk,
			PageSize:   int(cfg.PageSize),
			EngineKind: cfg.IOEngine,
			Policy:     policy,
			Registerer: reg,
			Logger:     logger,
		})
		if err != nil {
			return nil, fmt.Errorf("open the NVMe cache tier in --cache-dir %s (--cache-disk %s, --io-engine %s): %w", cfg.CacheDir, formatSize(cfg.CacheDisk), cfg.IOEngine, err)
		}
		// The tier logs its engine, slots and the pages it found.
		extra = append(extra, disk)
	}
	extra = append(extra, neighbor...)
	c, err := cache.New(cache.Config{
		PageSize:     int(cfg.PageSize),
		MemBytes:     cfg.CacheMem,
		Registerer:   reg,
		Logger:       logger,
		MemoryPolicy: policy,
	}, st, extra...)
	if err != nil {
		for _, t := range extra {
			if cerr := t.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("close cache tier %s: %w", t.Name(), cerr))
			}
		}
		return nil, fmt.Errorf("create cache: %w", err)
	}
	return c, nil
}

// kernelCacheTimeout maps the --attr-timeout/--entry-timeout value to
// fs.Config, where 0 means the default and a negative value no caching:
// on the command line 0 means no caching.
func kernelCacheTimeout(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

// watchSignals cancels the node on the first SIGINT or SIGTERM and exits
// the process at once on the second: an operator who signals twice wants
// out now, even if a flush is stuck.
func watchSignals(sigs <-chan os.Signal, stop <-chan struct{}, cancel context.CancelFunc, logger *slog.Logger) {
	select {
	case sig := <-sigs:
		logger.Info("received signal; shutting down (signal again to exit immediately)", "signal", sig.String())
		cancel()
	case <-stop:
		return
	}
	select {
	case sig := <-sigs:
		logger.Error("received a second signal during shutdown; exiting immediately without a clean unmount", "signal", sig.String())
		code := 1
		if s, ok := sig.(syscall.Signal); ok {
			code = 128 + int(s)
		}
		os.Exit(code)
	case <-stop:
	}
}

// interrupted wraps a start-up error caused by a signal so that it reads as
// such rather than as a failure of the component that was starting.
func interrupted(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted during start-up: %w", err)
	}
	return err
}
