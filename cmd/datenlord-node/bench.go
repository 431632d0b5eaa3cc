package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/datenlord/datenlord-go/bench/fsbench"
	"github.com/datenlord/datenlord-go/bench/tiers"
	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/cache/policysim"
	"github.com/datenlord/datenlord-go/rdma/rdmabench"
	"github.com/datenlord/datenlord-go/tcpfallback"
)

// newBenchCmd returns `datenlord-node bench` with its subcommands.
func newBenchCmd(s streams) *cobra.Command {
	c := &cobra.Command{
		Use:   "bench",
		Short: "Benchmark the latency tiers, a mounted file system, or the cache policies",
		Long: `bench measures what the project is tuned around. Every tier figure stands
next to a baseline measured in the same run (memcpy, raw io_uring reads, a raw
TCP ping-pong, a raw S3 GET), so it reads as a ratio to what this machine can do.`,
		Example: `  # The latency tiers on a throw-away local setup, with JSON and a plot
  datenlord-node bench tiers --local --json tiers.json --plot tiers.svg

  # A mounted file system (a DatenLord mount, or any other for comparison)
  datenlord-node bench fs /mnt/datenlord

  # Cache policy hit ratios against Belady's optimum
  datenlord-node bench cache`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return c.Help() },
	}
	c.AddCommand(newBenchTiersCmd(s), newBenchFSCmd(s), newBenchCacheCmd(s))
	return c
}

// signalContext is ctx cancelled on SIGINT or SIGTERM.
func signalContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// progressLine returns a progress callback that redraws one line on w
// when w is a terminal (nil otherwise), and a func that clears the line.
func progressLine(w io.Writer, what string) (func(i, n int, name string), func()) {
	if !isTerminal(w) {
		return nil, func() {}
	}
	start := time.Now()
	const width = 24
	return func(i, n int, name string) {
			filled := 0
			if n > 0 {
				filled = i * width / n
			}
			fmt.Fprintf(w, "\r\033[K%s [%s%s] %d/%d %s (%s)", what, strings.Repeat("#", filled), strings.Repeat(".", width-filled),
				i, n, name, time.Since(start).Round(time.Second))
		}, func() {
			fmt.Fprint(w, "\r\033[K")
		}
}

// parseSizes parses a comma-separated list of sizes (4KiB,64KiB).
func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := parseSize(f)
		if err != nil {
			return nil, err
		}
		out = append(out, int(n))
	}
	return out, nil
}

func newBenchTiersCmd(s streams) *cobra.Command {
	var (
		local              bool
		sizes              string
		duration           time.Duration
		iterations         int
		parallel           int
		workingSet         int64
		dir                string
		s3URL              string
		noS3, noFio        bool
		only               []string
		jsonPath, plotPath string
		logLevel           string
		rdmaDevice         string
		addr, secretFile   string
		cpuProfile         string
	)
	c := &cobra.Command{
		Use:   "tiers --local | --addr HOST:PORT",
		Short: "Latency and throughput of each cache tier next to its raw baseline",
		Long: `bench tiers measures, for each page size, the latency (p50, p99, p999 of one
request at a time) and the throughput (--parallel workers) of every tier of the
cache, each next to its baseline measured in the same run:

  memory         Cache.ReadPage memory hits            vs memcpy of the same size
  disk/uring     NVMe tier Get, io_uring engine        vs raw io_uring O_DIRECT reads of the same file (and fio)
  disk/psync     NVMe tier Get, pread engine           vs raw O_DIRECT pread of the same file
  disk/uring-sqpoll  NVMe tier Get, io_uring with SQPOLL  vs raw reads through the same engine
  neighbor/tcp   a second node's memory over TCP       vs a raw TCP ping-pong of the same size
  neighbor/rdma  the same, pages by one-sided RDMA READ  vs perftest's ib_read_lat on the same device
  store/file     local directory store ReadAt          vs pread of the same block file
  store/s3       S3 store ReadAt (ranged GET)          vs a raw aws-sdk GetObject of the same range

--local runs all of it in this process on throw-away temp dirs: two cache
nodes over real tcpfallback on 127.0.0.1, a versitygw for S3 when its binary is
found (else the S3 rows say skipped).

--addr HOST:PORT points the neighbor/tcp row at a running cluster instead: the
bench joins as a read-only client (authenticated with the cluster secret from
--cluster-secret-file or DATENLORD_CLUSTER_SECRET), asks the node at HOST:PORT
(its --listen) which pages it holds in memory and reads them at random over the
network; its baseline is a raw TCP ping-pong with a server that the node starts
on its own host for the run (stopped at the end, or after 5 minutes). Only the
node's page size is measured (other sizes say skipped); the node must hold at
least 8 pages (load some with 'datenlord-node cache warmup'). The memory, disk
and store rows measure this host: run the bench on a cluster node, with --dir
on its cache device and --s3-url at its bucket (credentials from AWS_* as for
serve).

The RDMA rows need a binary built with cgo (libibverbs), an RDMA device
(mlx5, rxe, siw, ...) and, for the baseline, perftest's ib_read_lat in PATH;
otherwise they say skipped and why. The device's RoCE v2 GID of 127.0.0.1
is used when it has one (soft-RoCE bound to lo: make bench-rdma runs this in
a qemu guest), else its first IPv4 GID.

RATIO p50 is the tier's p50 over its baseline's: 1.00x means the tier costs no
more than the raw mechanism underneath; 2x means it doubles it. Each phase is
bounded by --duration and --iterations, so a default run takes about a minute.`,
		Example: `  # Everything, with JSON and a plot
  datenlord-node bench tiers --local --json tiers.json --plot tiers.svg

  # A quick look at 64 KiB pages only, memory and disk
  datenlord-node bench tiers --local --sizes 64KiB --only memory,disk/uring --duration 100ms

  # The neighbor tier of a running cluster: node n2's pages, from this host
  DATENLORD_CLUSTER_SECRET=s3cret datenlord-node bench tiers --addr 10.0.0.2:7071 --only neighbor/tcp

  # The disk rows on the cache device and S3 on a real bucket
  datenlord-node bench tiers --local --dir /nvme/bench --s3-url 's3://bucket/bench?region=eu-west-1'`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if local == (addr != "") {
				return &usageError{cmd: c, err: errors.New("bench tiers needs exactly one of --local (a throw-away local setup) and --addr HOST:PORT (a running node)")}
			}
			sz, err := parseSizes(sizes)
			if err != nil {
				return &usageError{cmd: c, err: fmt.Errorf("--sizes: %w", err)}
			}
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
				return &usageError{cmd: c, err: fmt.Errorf("--log-level: %w", err)}
			}
			ctx, cancel := signalContext(c.Context())
			defer cancel()
			progress, clear := progressLine(s.Stderr, "bench tiers")
			logger := slog.New(slog.NewTextHandler(s.Stderr, &slog.HandlerOptions{Level: lvl}))
			cfg := tiers.Config{
				Sizes: sz, Duration: duration, Iterations: iterations, Parallel: parallel, WorkingSet: workingSet,
				Dir: dir, S3URL: s3URL, NoS3: noS3, NoFio: noFio, Only: only, Progress: progress,
				// The RDMA rows: real verbs where this binary has cgo
				// and the host an RDMA device, else skipped with why.
				RDMA:   rdmabench.New(rdmabench.Config{Device: rdmaDevice, Logger: logger}),
				Logger: logger,
			}
			if cpuProfile != "" {
				stop, err := startCPUProfile(cpuProfile)
				if err != nil {
					return err
				}
				defer stop()
			}
			if addr != "" {
				rm, closeRemote, err := dialBenchRemote(ctx, c, s, addr, secretFile, logger)
				if err != nil {
					return err
				}
				defer closeRemote()
				cfg.Remote = rm
			}
			rep, err := tiers.Run(ctx, cfg)
			clear()
			if err != nil {
				return err
			}
			if err := tiers.WriteTable(s.Stdout, rep); err != nil {
				return err
			}
			if jsonPath != "" {
				if err := tiers.WriteJSON(jsonPath, rep); err != nil {
					return err
				}
				fmt.Fprintf(s.Stdout, "wrote %s\n", jsonPath)
			}
			if plotPath != "" {
				if err := tiers.WritePlot(plotPath, rep); err != nil {
					return err
				}
				fmt.Fprintf(s.Stdout, "wrote %s\n", plotPath)
			}
			return nil
		},
	}
	f := c.Flags()
	f.BoolVar(&local, "local", false, "start the throw-away local setup (in-process nodes, temp dirs)")
	f.StringVar(&addr, "addr", "", "host:port (--listen) of a running node: the neighbor row reads its pages (instead of --local)")
	f.StringVar(&secretFile, "cluster-secret-file", "", "with --addr: file holding the cluster secret (or the secret itself in "+secretEnv+")")
	f.StringVar(&sizes, "sizes", "4KiB,64KiB,512KiB", "page sizes, comma-separated")
	f.DurationVar(&duration, "duration", 300*time.Millisecond, "time bound of each phase (latency, throughput) of each row")
	f.IntVar(&iterations, "iterations", 20000, "request bound of each phase of each row")
	f.IntVar(&parallel, "parallel", 4, "workers of the throughput phase (0: default 4, negative: no throughput phase)")
	f.Var(newSizeValue(&workingSet, 32<<20), "working-set", "bytes of pages each tier reads at random")
	f.StringVar(&dir, "dir", "", "directory for the temporary disk tier file and stores (default: the system temp dir); put it on the device to measure")
	f.StringVar(&s3URL, "s3-url", "", "s3://BUCKET/PREFIX?endpoint=... for the S3 rows (credentials from AWS_*); default: start versitygw if installed")
	f.BoolVar(&noS3, "no-s3", false, "skip the S3 rows")
	f.BoolVar(&noFio, "no-fio", false, "skip the fio baseline even when fio is installed")
	f.StringSliceVar(&only, "only", nil, "measure only these tiers (memory, disk/uring, disk/psync, disk/uring-sqpoll, neighbor/tcp, neighbor/rdma, store/file, store/s3)")
	f.StringVar(&jsonPath, "json", "", "write every row as JSON to FILE")
	f.StringVar(&plotPath, "plot", "", "draw the latency distributions to FILE (.svg or .png)")
	f.StringVar(&logLevel, "log-level", "warn", "log level of the measured components (debug, info, warn, error)")
	f.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to FILE (go tool pprof FILE)")
	f.StringVar(&rdmaDevice, "rdma-device", "", "RDMA device of the neighbor/rdma and ib_read_lat rows (default: the first)")
	return c
}

func newBenchFSCmd(s streams) *cobra.Command {
	var (
		cfg                          fsbench.Config
		bigFile, blockSize, randSize int64
		smallSize                    int64
		jsonPath                     string
	)
	c := &cobra.Command{
		Use:   "fs PATH",
		Short: "Throughput and metadata rates of any mounted file system (like juicefs bench)",
		Long: `bench fs measures the file system that holds PATH through plain POSIX calls:
sequential write and read of a big file per thread, random reads and writes
inside it, and small-file write (create), read, stat and unlink rates. It works
on any file system, so a DatenLord mount and a local directory can be compared
on the same machine. It works in a fresh directory under PATH, removed at the
end. The big file is fsynced after writing and dropped from the OS page cache
(posix_fadvise) before it is read; a FUSE file system's own cache still counts.`,
		Example: `  # A DatenLord mount, then a plain directory on the same machine
  datenlord-node bench fs /mnt/datenlord
  datenlord-node bench fs /var/tmp

  # 4 threads, 1 GiB each, JSON for machines
  datenlord-node bench fs /mnt/datenlord --threads 4 --big-file-size 1GiB --json fs.json`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cfg.Path = args[0]
			cfg.BigFileSize, cfg.BlockSize, cfg.RandomSize, cfg.SmallFileSize = bigFile, int(blockSize), int(randSize), int(smallSize)
			ctx, cancel := signalContext(c.Context())
			defer cancel()
			progress, clear := progressLine(s.Stderr, "bench fs")
			cfg.Progress = progress
			res, err := fsbench.Run(ctx, cfg)
			clear()
			if err != nil {
				return err
			}
			if err := fsbench.WriteTable(s.Stdout, res); err != nil {
				return err
			}
			if jsonPath != "" {
				return writeJSONFile(jsonPath, func(w io.Writer) error { return fsbench.WriteJSON(w, res) })
			}
			return nil
		},
	}
	f := c.Flags()
	f.IntVar(&cfg.Threads, "threads", 1, "concurrent workers, each on its own files")
	f.Var(newSizeValue(&bigFile, 256<<20), "big-file-size", "size of each thread's big file")
	f.Var(newSizeValue(&blockSize, 1<<20), "block-size", "size of each sequential read and write")
	f.Var(newSizeValue(&randSize, 4<<10), "random-size", "size of each random read and write")
	f.IntVar(&cfg.RandomOps, "random-ops", 2000, "random reads (and writes) per thread")
	f.DurationVar(&cfg.RandomTime, "random-time", 10*time.Second, "time bound of each random phase")
	f.Var(newSizeValue(&smallSize, 128<<10), "small-file-size", "size of each small file")
	f.IntVar(&cfg.SmallFiles, "small-files", 100, "small files per thread")
	f.StringVar(&jsonPath, "json", "", "write the result as JSON to FILE")
	return c
}

// writeJSONFile creates path and fills it with write.
func writeJSONFile(path string, write func(io.Writer) error) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("--json: %w", err)
	}
	if err := write(f); err != nil {
		_ = f.Close()
		return fmt.Errorf("--json %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("--json %s: %w", path, err)
	}
	return nil
}

// cacheBenchRow is one policysim row with its hit ratio, for --json.
type cacheBenchRow struct {
	policysim.Row
	HitRatio float64 `json:"hit_ratio"`
}

func newBenchCacheCmd(s streams) *cobra.Command {
	var (
		refs, pages int
		fractions   []float64
		policies    []string
		jsonPath    string
	)
	c := &cobra.Command{
		Use:   "cache",
		Short: "Hit ratios of the cache eviction policies on traces, against Belady's optimum",
		Long: `bench cache replays three synthetic page traces through every eviction policy
of the memory and NVMe tiers (cache/policysim) at several cache sizes, next to
Belady's offline optimum (MIN), the bound no policy can beat:

  zipf    random Zipf(1.1) references over --pages pages
  scan    a loop over all --pages pages, flagged sequential
  mixed   a Zipf(1.1) working set of a tenth of the pages, interleaved (runs of
          1000) with a loop over the rest, flagged sequential

Cache sizes are fractions of the trace's distinct pages.`,
		Example: `  # The default comparison (1M references per trace over 100k pages)
  datenlord-node bench cache

  # A quick one, as JSON
  datenlord-node bench cache --refs 100000 --pages 10000 --json cache.json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if pages < 20 || refs < 1 {
				return &usageError{cmd: c, err: errors.New("--pages must be at least 20 and --refs at least 1")}
			}
			for _, p := range policies {
				if _, err := cache.NewPolicyFactory(p); err != nil {
					return &usageError{cmd: c, err: fmt.Errorf("--policies: %w", err)}
				}
			}
			hot := pages / 10
			traces := []policysim.Trace{
				policysim.Zipf("zipf", pages, refs, 1.1, 1),
				policysim.Loop("scan", pages, refs),
				policysim.Mixed("mixed", hot, pages-hot, 1000, refs, 1.1, 2),
			}
			rows, err := policysim.Run(traces, fractions, policies)
			if err != nil {
				return fmt.Errorf("bench cache: %w", err)
			}
			if err := policysim.WriteTable(s.Stdout, rows); err != nil {
				return fmt.Errorf("bench cache: %w", err)
			}
			if jsonPath == "" {
				return nil
			}
			out := struct {
				Refs      int             `json:"refs_per_trace"`
				Pages     int             `json:"pages"`
				Fractions []float64       `json:"fractions"`
				Rows      []cacheBenchRow `json:"rows"`
			}{Refs: refs, Pages: pages, Fractions: fractions}
			for _, r := range rows {
				out.Rows = append(out.Rows, cacheBenchRow{Row: r, HitRatio: r.HitRatio()})
			}
			return writeJSONFile(jsonPath, func(w io.Writer) error {
				enc := json.NewEncoder(w)
				enc.SetIndent("", "  ")
				return enc.Encode(out)
			})
		},
	}
	f := c.Flags()
	f.IntVar(&refs, "refs", 1_000_000, "references per trace")
	f.IntVar(&pages, "pages", 100_000, "distinct pages of each trace")
	f.Float64SliceVar(&fractions, "fractions", policysim.DefaultFractions(), "cache sizes as fractions of the distinct pages")
	f.StringSliceVar(&policies, "policies", cache.PolicyNames(), "policies to compare")
	f.StringVar(&jsonPath, "json", "", "write every row (with its hit ratio) as JSON to FILE")
	return c
}

// dialBenchRemote makes the client transport of `bench tiers --addr` and
// checks that the node answers.
func dialBenchRemote(ctx context.Context, c *cobra.Command, s streams, addr, secretFile string, logger *slog.Logger) (*tiers.Remote, func(), error) {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, nil, &usageError{cmd: c, err: fmt.Errorf("--addr %q: want host:port: %w", addr, err)}
	}
	lookup := s.LookupEnv
	if lookup == nil {
		lookup = func(string) (string, bool) { return "", false }
	}
	secret, err := readSecret(secretFile, lookup)
	if err != nil {
		return nil, nil, &usageError{cmd: c, err: err}
	}
	t, err := tcpfallback.New(ctx, tcpfallback.Config{NodeID: "datenlord-node-bench", Secret: secret, MaxInFlight: 1024, Logger: logger})
	if err != nil {
		return nil, nil, fmt.Errorf("create client transport: %w", err)
	}
	return &tiers.Remote{Addr: addr, Transport: t}, func() { _ = t.Close() }, nil
}

// startCPUProfile starts a CPU profile into path; stop ends it and
// closes the file.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("--cpuprofile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); _ = f.Close() }, nil
}
