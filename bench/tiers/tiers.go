// Package tiers measures the latency tiers of a DatenLord node, each next
// to a baseline of the same page size measured in the same run, so that
// every figure reads as a ratio to what the machine can do:
//
//	tier                 what is timed                                  baseline
//	memory               Cache.ReadPage hits in the memory tier         memcpy of the same size over the same working set
//	disk/uring           DiskTier.Get with the io_uring engine          raw io_uring O_DIRECT reads of the same pages.dat (and fio)
//	disk/psync           DiskTier.Get with the pread engine             raw pread O_DIRECT reads of the same pages.dat
//	disk/uring-sqpoll    DiskTier.Get with io_uring and SQPOLL          raw reads of the same pages.dat through that engine
//	neighbor/tcp         NeighborTier.GetSized from a second in-process node over tcpfallback on 127.0.0.1
//	                                                                    a raw Go TCP ping-pong of the same size
//	neighbor/rdma        NeighborTier.GetSized as for neighbor/tcp, the page read from the owner's arena by one-sided RDMA READ
//	                     (Config.RDMA; skipped without an RDMA device)  ib_read_lat (perftest) on the same device,
//	                                                                    and rdma-read: one QP.Read of header+page
//	store/file           store ReadAt of a page of a block in a local directory store
//	                                                                    a raw pread of the same block file
//	store/s3             store ReadAt (ranged GET) from S3 (versitygw)  a raw aws-sdk GetObject of the same range
//
// Each row has a latency phase (one request at a time, every latency
// recorded: p50, p99, p999) and a throughput phase (Config.Parallel
// workers), both bounded by Config.Duration and Config.Iterations. The
// ratio of a tier row is its p50 over its baseline's p50.
//
// Run does the measuring; WriteTable, WriteJSON and WritePlot render a
// Report. The node binary exposes it as `datenlord-node bench tiers`.
package tiers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/iouring"
	"github.com/datenlord/datenlord-go/tcpfallback"
)

// Row kinds.
const (
	KindTier     = "tier"
	KindBaseline = "baseline"
)

// Tier and baseline names, as they appear in rows.
const (
	TierMemory       = "memory"
	TierDiskUring    = "disk/uring"
	TierDiskPsync    = "disk/psync"
	TierDiskSQPoll   = "disk/uring-sqpoll"
	TierNeighborTCP  = "neighbor/tcp"
	TierNeighborRDMA = "neighbor/rdma"
	TierStoreFile    = "store/file"
	TierStoreS3      = "store/s3"

	BaseMemcpy    = "memcpy"
	BaseRawUring  = "raw-uring"
	BaseRawPsync  = "raw-pread"
	BaseRawSQPoll = "raw-uring-sqpoll"
	BaseFio       = "fio-uring"
	BaseTCP       = "tcp-pingpong"
	BaseIBReadLat = "ib_read_lat"
	BaseRDMARead  = "rdma-read"
	BaseFilePread = "file-pread"
	BaseS3Get     = "aws-sdk-get"
)

// Config configures a Run.
type Config struct {
	// Sizes are the page sizes (default 4 KiB, 64 KiB, 512 KiB).
	Sizes []int
	// Duration bounds each phase of each row (default 300ms); a phase
	// also stops after Iterations requests, and the latency phase runs at
	// least MinSamples (unless a phase exceeds 4x Duration).
	Duration   time.Duration
	Iterations int
	MinSamples int
	// Parallel is the number of workers of the throughput phase (default
	// 4; negative: no throughput phase).
	Parallel int
	// WorkingSet is the bytes of pages each tier reads from at random
	// (default 32 MiB; at least 8 pages).
	WorkingSet int64
	// Dir holds the temporary cache files and stores (default: a fresh
	// directory under os.TempDir(), removed at the end). The disk tier's
	// file should sit on the device to be measured; tmpfs disables
	// O_DIRECT.
	Dir string
	// S3URL, when set, is the s3:// store of the store/s3 row
	// (credentials from the environment); otherwise a versitygw is started
	// when its binary is found (see FindVersitygw), else the row is
	// skipped.
	S3URL string
	// NoS3 skips the S3 rows.
	NoS3 bool
	// NoFio skips fio even when it is installed.
	NoFio bool
	// Only, when non-empty, restricts the run to these tier names (their
	// baselines included).
	Only []string
	// Remote, when set, points the neighbor/tcp row at a running node
	// (its pages, its host) instead of an in-process pair; the other rows
	// still measure this host.
	Remote *Remote
	// RDMA measures the neighbor tier over RDMA and its ib_read_lat
	// baseline; nil (or a device-less host) skips those rows.
	RDMA RDMAHook
	// Progress, when set, is called before each row with the row's index
	// (from 0), the number of rows and the row's name.
	Progress func(i, n int, name string)
	// Logger receives structured logs (nil: a discarding logger; the
	// measured code logs at warn only).
	Logger *slog.Logger
}

// RDMAHook is the seam for the RDMA rows (the verbs code needs cgo; this
// package does not). The rdma/rdmabench package implements it.
//
// The neighbor/rdma row is the neighbor/tcp setup (two in-process cache
// nodes over tcpfallback on 127.0.0.1) with each node's transport wrapped
// by Attach, as the node does in production: the reader's NeighborTier
// then reads the owner's arena slots with one-sided RDMA READs. The
// ib_read_lat row is measured outside the Workload loop by Baseline.
type RDMAHook interface {
	// Available reports whether this host can measure the RDMA rows (a
	// reason when not: no device, no RDMA in this build).
	Available() (ok bool, reason string)
	// Attach gives one in-process node one-sided slot reads over its
	// transport node.
	Attach(ctx context.Context, node *tcpfallback.Transport, pageSize int) (RDMANode, error)
	// Baseline measures raw RDMA READs of pageSize bytes on the same
	// device (perftest's ib_read_lat) within b. An error made by Skip
	// marks the row skipped.
	Baseline(ctx context.Context, pageSize int, b Bounds) (Measurement, error)
	// RawRead returns the second baseline, the verbs layer without the
	// tier: one READ of what the tier READs (slot header and page)
	// through the project's rdma package on a QP pair of its own.
	RawRead(ctx context.Context, pageSize int) (wl Workload, cleanup func(), err error)
}

// RDMANode is the RDMA side of one in-process node.
type RDMANode interface {
	// Transport is the node transport with one-sided slot reads (a
	// cache.SlotReader), for NeighborConfig.Transport.
	Transport() cache.NeighborTransport
	// Serve answers peers' RDMA connect and segment requests from c's
	// memory arena.
	Serve(c *cache.Cache)
	// Reads counts the one-sided READs that completed and that failed
	// (the neighbor tier then read over TCP).
	Reads() (ok, failed uint64)
	// Close destroys the node's QPs and memory registrations.
	Close() error
}

// Bounds are the bounds of one row's latency phase, for measurements made
// outside this package.
type Bounds struct {
	Duration   time.Duration
	Iterations int
	MinSamples int
}

// Measurement is a latency distribution measured outside this package
// (by an external tool); latencies in microseconds, zero when unknown.
type Measurement struct {
	Samples                                         int
	MinUS, P1US, P50US, P90US, P99US, P999US, MaxUS float64
	MeanUS                                          float64
	// MBps is the throughput in 10^6 bytes per second (0: not measured).
	MBps float64
	// Command is the command line that measured it; Note what the
	// figures are.
	Command string
	Note    string
}

// Skip returns an error that marks a row (or a group's rows) skipped for
// reason, for hooks that find they cannot measure on this host.
func Skip(reason string) error { return &skipError{reason: reason} }

// Row is one measured (or skipped) tier or baseline at one page size.
// Latencies are in microseconds; MBps is 10^6 bytes per second.
type Row struct {
	Tier     string  `json:"tier"`
	Kind     string  `json:"kind"`
	Size     int     `json:"size"`
	Baseline string  `json:"baseline,omitempty"`
	Samples  int     `json:"samples"`
	MinUS    float64 `json:"min_us"`
	P1US     float64 `json:"p1_us"`
	P50US    float64 `json:"p50_us"`
	P90US    float64 `json:"p90_us"`
	P99US    float64 `json:"p99_us"`
	P999US   float64 `json:"p999_us"`
	MaxUS    float64 `json:"max_us"`
	MeanUS   float64 `json:"mean_us"`
	MBps     float64 `json:"mb_per_s"`
	Parallel int     `json:"parallel,omitempty"`
	// Ratio is this tier's p50 over its baseline's p50 (0 for baselines
	// and when either is missing); MBpsRatio its throughput over the
	// baseline's.
	Ratio     float64 `json:"ratio_p50,omitempty"`
	MBpsRatio float64 `json:"ratio_mb_per_s,omitempty"`
	Skipped   string  `json:"skipped,omitempty"`
	Note      string  `json:"note,omitempty"`
	// Command is the external tool's command line, for rows measured by
	// one (ib_read_lat).
	Command string `json:"command,omitempty"`

	lat []time.Duration // sorted samples, for the plot
}

// Machine names the host a report was measured on.
type Machine struct {
	Hostname  string `json:"hostname"`
	CPUModel  string `json:"cpu_model"`
	NumCPU    int    `json:"nproc"`
	GOOS      string `json:"goos"`
	GOARCH    string `json:"goarch"`
	GoVersion string `json:"go_version"`
	Kernel    string `json:"kernel"`
}

// Report is the result of a Run.
type Report struct {
	Machine  Machine   `json:"machine"`
	Started  time.Time `json:"started"`
	Elapsed  float64   `json:"elapsed_s"`
	Duration float64   `json:"phase_s"`
	Parallel int       `json:"parallel"`
	Dir      string    `json:"dir"`
	// NeighborNode is the address of the running node the neighbor rows
	// read from (Config.Remote); empty for an in-process pair.
	NeighborNode string `json:"neighbor_node,omitempty"`
	Rows         []Row  `json:"rows"`
}

// Find returns the row of tier at size.
func (r *Report) Find(tier string, size int) (Row, bool) {
	for _, row := range r.Rows {
		if row.Tier == tier && row.Size == size {
			return row, true
		}
	}
	return Row{}, false
}

// DefaultSizes returns the page sizes of a default run.
func DefaultSizes() []int { return []int{4 << 10, 64 << 10, 512 << 10} }

func (c *Config) fill() {
	if len(c.Sizes) == 0 {
		c.Sizes = DefaultSizes()
	}
	if c.Duration <= 0 {
		c.Duration = 300 * time.Millisecond
	}
	if c.Iterations <= 0 {
		c.Iterations = 20000
	}
	if c.MinSamples <= 0 {
		c.MinSamples = min(200, c.Iterations)
	}
	if c.Parallel == 0 {
		c.Parallel = 4
	}
	if c.WorkingSet <= 0 {
		c.WorkingSet = 32 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// runner holds one Run's state.
type runner struct {
	cfg Config
	dir string
	log *slog.Logger
}

// group is a set of rows sharing one setup at one page size.
type group struct {
	tiers []string // rows it produces, tier first then its baselines
	setup func(ctx context.Context, size int) (setupResult, error)
	// skip, when it returns a reason, marks all rows skipped.
	skip func() string
}

// setupResult is a group set up at one page size: the workloads by row
// name, rows measured outside this process (fio) that fill the row
// themselves, and the cleanup.
type setupResult struct {
	workloads map[string]Workload
	external  map[string]func(ctx context.Context, row *Row) error
	cleanup   func()
}

// Run measures every tier and baseline at every size and returns the
// report. A tier that cannot be set up on this host (no versitygw, no RDMA
// device) is a skipped row with the reason; any other failure is an error.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	cfg.fill()
	for _, s := range cfg.Sizes {
		if s <= 0 || s%4096 != 0 {
			return nil, fmt.Errorf("page size %d: want a positive multiple of 4096", s)
		}
	}
	rep := &Report{Machine: DescribeMachine(), Started: time.Now().UTC(), Duration: cfg.Duration.Seconds(), Parallel: cfg.Parallel}
	dir := cfg.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "datenlord-bench-tiers-")
		if err != nil {
			return nil, fmt.Errorf("bench tiers: temp dir: %w", err)
		}
		defer os.RemoveAll(d)
		dir = d
	} else {
		d, err := os.MkdirTemp(dir, "datenlord-bench-tiers-")
		if err != nil {
			return nil, fmt.Errorf("bench tiers: temp dir in %s: %w", dir, err)
		}
		defer os.RemoveAll(d)
		dir = d
	}
	rep.Dir = dir
	if cfg.Remote != nil {
		rep.NeighborNode = cfg.Remote.Addr
	}
	r := &runner{cfg: cfg, dir: dir, log: cfg.Logger}

	s3, s3Skip, s3Stop := r.openS3(ctx)
	defer s3Stop()

	groups := []group{
		{tiers: []string{TierMemory, BaseMemcpy}, setup: r.memorySetup},
		r.diskGroup(),
		{tiers: []string{TierDiskPsync, BaseRawPsync}, setup: r.diskSetup(iouring.KindPsync)},
		{tiers: []string{TierDiskSQPoll, BaseRawSQPoll}, setup: r.diskSetup(iouring.KindUringSQPoll)},
		{tiers: []string{TierNeighborTCP, BaseTCP}, setup: r.neighborSetup},
		r.rdmaGroup(),
		{tiers: []string{TierStoreFile, BaseFilePread}, setup: r.fileStoreSetup},
		{tiers: []string{TierStoreS3, BaseS3Get}, setup: r.s3Setup(s3), skip: func() string { return s3Skip }},
	}
	var todo []group
	for _, g := range groups {
		if len(cfg.Only) == 0 || containsAny(cfg.Only, g.tiers) {
			todo = append(todo, g)
		}
	}
	total := 0
	for _, g := range todo {
		total += len(g.tiers) * len(cfg.Sizes)
	}
	started := time.Now()
	idx := 0
	for _, size := range cfg.Sizes {
		for _, g := range todo {
			rows, err := r.runGroup(ctx, g, size, &idx, total)
			if err != nil {
				return nil, err
			}
			rep.Rows = append(rep.Rows, rows...)
		}
	}
	if cfg.Progress != nil {
		cfg.Progress(total, total, "done")
	}
	rep.Elapsed = time.Since(started).Seconds()
	return rep, nil
}

// runGroup sets up one group at one size and measures its rows.
func (r *runner) runGroup(ctx context.Context, g group, size int, idx *int, total int) ([]Row, error) {
	rows := make([]Row, len(g.tiers))
	for i, name := range g.tiers {
		rows[i] = Row{Tier: name, Kind: KindBaseline, Size: size}
		if i == 0 {
			rows[i].Kind = KindTier
			if len(g.tiers) > 1 {
				rows[i].Baseline = g.tiers[1]
			}
		}
	}
	progress := func(name string) {
		if r.cfg.Progress != nil {
			r.cfg.Progress(*idx, total, name+" "+sizeName(size))
		}
		*idx++
	}
	if g.skip != nil {
		if reason := g.skip(); reason != "" {
			for i := range rows {
				progress(rows[i].Tier)
				rows[i].Skipped = reason
			}
			return rows, nil
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("bench tiers: %w", err)
	}
	res, err := g.setup(ctx, size)
	if err != nil {
		var sk *skipError
		if errors.As(err, &sk) {
			for i := range rows {
				progress(rows[i].Tier)
				rows[i].Skipped = sk.reason
			}
			return rows, nil
		}
		return nil, fmt.Errorf("bench tiers: set up %s at %s: %w", g.tiers[0], sizeName(size), err)
	}
	defer res.cleanup()
	for i := range rows {
		progress(rows[i].Tier)
		if ext, ok := res.external[rows[i].Tier]; ok {
			if err := ext(ctx, &rows[i]); err != nil {
				var sk *skipError
				if !errors.As(err, &sk) {
					return nil, err
				}
				rows[i].Skipped = sk.reason
			}
			continue
		}
		wl, ok := res.workloads[rows[i].Tier]
		if !ok {
			rows[i].Skipped = "not set up"
			continue
		}
		if err := r.measure(ctx, &rows[i], wl); err != nil {
			return nil, fmt.Errorf("bench tiers: %w", err)
		}
		rows[i].Note = noteOf(rows[i].Tier)
	}
	if base := rows[0].Baseline; base != "" {
		for _, b := range rows[1:] {
			if b.Tier == base && b.Skipped == "" && rows[0].Skipped == "" && b.P50US > 0 {
				rows[0].Ratio = rows[0].P50US / b.P50US
				if b.MBps > 0 {
					rows[0].MBpsRatio = rows[0].MBps / b.MBps
				}
			}
		}
	}
	return rows, nil
}

// noteOf explains what a tier row's figure includes.
func noteOf(tier string) string {
	switch tier {
	case TierMemory:
		return "Cache.ReadPage hit: lock, pin, copy, CRC-32C check"
	case TierDiskUring:
		return "DiskTier.Get: one O_DIRECT read of the page + CRC-32C"
	case TierDiskPsync:
		return "DiskTier.Get: one O_DIRECT pread of the page + CRC-32C"
	case TierDiskSQPoll:
		return "DiskTier.Get: one O_DIRECT read of the page + CRC-32C, submitted by the kernel's SQ polling thread"
	case TierNeighborTCP:
		return "NeighborTier.GetSized from the owner's memory over tcpfallback (auth, frames, CRCs) on 127.0.0.1"
	case TierNeighborRDMA:
		return "NeighborTier.GetSized at a cached slot location: one RDMA READ of header+page (rdmaslot), slot check, CRC-32C, copy"
	case BaseRDMARead:
		return "rdma QP.Read of header+page into a registered buffer on a QP pair of its own (the Go verbs layer without the tier)"
	case TierStoreFile:
		return "LocalStore.ReadAt of a page of a block (warm OS page cache)"
	case TierStoreS3:
		return "S3Store.ReadAt: one ranged GET"
	}
	return ""
}

// skipError marks a setup that cannot run on this host.
type skipError struct{ reason string }

func (e *skipError) Error() string { return "skipped: " + e.reason }

func skipped(format string, args ...any) error {
	return &skipError{reason: fmt.Sprintf(format, args...)}
}

func containsAny(set, names []string) bool {
	for _, n := range names {
		for _, s := range set {
			if strings.EqualFold(s, n) {
				return true
			}
		}
	}
	return false
}

// DescribeMachine names this host: CPU model from /proc/cpuinfo, CPU
// count, kernel release.
func DescribeMachine() Machine {
	m := Machine{NumCPU: runtime.NumCPU(), GOOS: runtime.GOOS, GOARCH: runtime.GOARCH, GoVersion: runtime.Version()}
	m.Hostname, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

// String renders the machine on one line.
func (m Machine) String() string {
	cpu := m.CPUModel
	if cpu == "" {
		cpu = "unknown CPU"
	}
	return fmt.Sprintf("%s, nproc %d, %s/%s, Linux %s, %s", cpu, m.NumCPU, m.GOOS, m.GOARCH, m.Kernel, m.GoVersion)
}
