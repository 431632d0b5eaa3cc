package tiers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/iouring"
)

// diskGroup is the disk tier on io_uring, its raw io_uring baseline and,
// when fio is installed, fio's io_uring random read of the same file.
func (r *runner) diskGroup() group {
	g := group{tiers: []string{TierDiskUring, BaseRawUring, BaseFio}, setup: r.diskSetup(iouring.KindUring)}
	return g
}

// diskSetup returns the setup of a disk tier on engine kind: a DiskTier in
// a fresh directory filled with the working set, read at random through
// DiskTier.Get; the baseline reads the same pages.dat with the same
// engine kind, O_DIRECT, into registered buffers, at random page-aligned
// offsets.
func (r *runner) diskSetup(kind string) func(ctx context.Context, size int) (setupResult, error) {
	return func(ctx context.Context, size int) (setupResult, error) {
		n := r.workingPages(size)
		dir, err := os.MkdirTemp(r.dir, "disk-"+kind+"-")
		if err != nil {
			return setupResult{}, fmt.Errorf("disk tier dir: %w", err)
		}
		var cleanups []func()
		cleanup := func() {
			for i := len(cleanups) - 1; i >= 0; i-- {
				cleanups[i]()
			}
			_ = os.RemoveAll(dir)
		}
		fail := func(err error) (setupResult, error) {
			cleanup()
			if kind != iouring.KindPsync && isUringRefused(err) {
				return setupResult{}, skipped("io_uring unavailable: %v", err)
			}
			return setupResult{}, err
		}
		fileBytes := int64(4096) + int64(n+pagesPerBlock)*int64(4096+size)
		t, err := cache.NewDiskTier(ctx, cache.DiskConfig{Dir: dir, Bytes: fileBytes, PageSize: size, EngineKind: kind, Logger: r.log})
		if err != nil {
			return fail(fmt.Errorf("disk tier (%s): %w", kind, err))
		}
		cleanups = append(cleanups, func() { _ = t.Close() })
		block := make([]byte, size)
		for p := range n {
			key := cache.PageKey{Block: uint64(p/pagesPerBlock + 1), Index: uint32(p % pagesPerBlock)}
			fillPattern(block, uint64(p))
			if err := t.WaitWritable(ctx); err != nil {
				return fail(fmt.Errorf("disk tier fill: %w", err))
			}
			if err := t.Put(ctx, key, block, cache.AccessRandom); err != nil {
				return fail(fmt.Errorf("disk tier fill: %w", err))
			}
		}
		if err := t.Flush(ctx); err != nil {
			return fail(fmt.Errorf("disk tier flush: %w", err))
		}
		if t.Len() != n {
			return fail(fmt.Errorf("disk tier holds %d of %d pages after the fill (writes dropped?)", t.Len(), n))
		}
		if !t.Direct() {
			r.log.Warn("disk tier file is not O_DIRECT: the disk rows measure the OS page cache", "path", t.Path())
		}
		// Raw baseline: same file, same engine kind, registered buffers.
		fd, direct, err := iouring.OpenDirect(t.Path(), unix.O_RDONLY, 0, r.log)
		if err != nil {
			return fail(fmt.Errorf("open %s: %w", t.Path(), err))
		}
		cleanups = append(cleanups, func() { _ = unix.Close(fd) })
		eng, err := iouring.Open(iouring.Config{Kind: kind, Logger: r.log})
		if err != nil {
			return fail(fmt.Errorf("raw %s engine: %w", kind, err))
		}
		cleanups = append(cleanups, func() { _ = eng.Close() })
		nbuf := max(r.cfg.Parallel, 1)
		bufs := make([][]byte, nbuf)
		for i := range bufs {
			b, err := iouring.AllocAligned(size)
			if err != nil {
				return fail(fmt.Errorf("raw buffers: %w", err))
			}
			bufs[i] = b
			cleanups = append(cleanups, func() { _ = iouring.FreeAligned(b) })
		}
		if err := eng.RegisterBuffers(bufs); err != nil {
			return fail(fmt.Errorf("raw buffers: register: %w", err))
		}
		// Pages of the file past the superblock, at size-aligned offsets
		// (the slot area; which slot holds which page does not matter).
		rawPages := int((fileBytes - 4096) / int64(size))
		keyOf := func(i int) cache.PageKey {
			p := pick(i, n)
			return cache.PageKey{Block: uint64(p/pagesPerBlock + 1), Index: uint32(p % pagesPerBlock)}
		}
		tierName, baseName := TierDiskUring, BaseRawUring
		switch kind {
		case iouring.KindPsync:
			tierName, baseName = TierDiskPsync, BaseRawPsync
		case iouring.KindUringSQPoll:
			tierName, baseName = TierDiskSQPoll, BaseRawSQPoll
		}
		res := setupResult{cleanup: cleanup, workloads: map[string]Workload{
			tierName: func(_ context.Context, _ int) (Op, func(), error) {
				dst := make([]byte, size)
				return func(ctx context.Context, i int) error {
					k := keyOf(i)
					got, ok, err := t.Get(ctx, k, dst)
					if err != nil {
						return fmt.Errorf("disk get %d/%d: %w", k.Block, k.Index, err)
					}
					if !ok || got != size {
						return fmt.Errorf("disk get %d/%d: miss (ok %v, %d bytes)", k.Block, k.Index, ok, got)
					}
					return nil
				}, func() {}, nil
			},
			baseName: func(_ context.Context, w int) (Op, func(), error) {
				buf := bufs[w%nbuf]
				return func(ctx context.Context, i int) error {
					off := int64(4096) + int64(pick(i, rawPages))*int64(size)
					got, err := eng.ReadFixed(ctx, fd, buf, off, w%nbuf)
					if err != nil {
						return fmt.Errorf("raw read at %d: %w", off, err)
					}
					if got != size {
						return fmt.Errorf("raw read at %d: %d bytes, want %d", off, got, size)
					}
					return nil
				}, func() {}, nil
			},
		}}
		if kind == iouring.KindUring {
			res.external = map[string]func(context.Context, *Row) error{
				BaseFio: func(ctx context.Context, row *Row) error {
					return r.runFio(ctx, row, t.Path(), fileBytes, direct)
				},
			}
		}
		return res, nil
	}
}

// isUringRefused reports whether err is the kernel refusing io_uring
// (not built in, disabled by sysctl or seccomp, no memlock).
func isUringRefused(err error) bool {
	return errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) || errors.Is(err, unix.ENOMEM)
}

// fioOutput is the part of fio's JSON output the fio row reads.
type fioOutput struct {
	Jobs []struct {
		Read struct {
			BwBytes float64 `json:"bw_bytes"`
			IOs     int     `json:"total_ios"`
			ClatNS  struct {
				Min        float64            `json:"min"`
				Max        float64            `json:"max"`
				Mean       float64            `json:"mean"`
				Percentile map[string]float64 `json:"percentile"`
			} `json:"clat_ns"`
		} `json:"read"`
	} `json:"jobs"`
}

// runFio fills row with fio's io_uring O_DIRECT random reads of path:
// latency at queue depth 1, throughput at queue depth Parallel.
func (r *runner) runFio(ctx context.Context, row *Row, path string, fileBytes int64, direct bool) error {
	if r.cfg.NoFio {
		return skipped("--no-fio")
	}
	bin, err := exec.LookPath("fio")
	if err != nil {
		return skipped("fio not installed")
	}
	run := func(depth int) (*fioOutput, error) {
		ms := max(r.cfg.Duration.Milliseconds(), 100)
		args := []string{
			"--name=datenlord-bench", "--filename=" + path, "--readonly",
			"--ioengine=io_uring", "--direct=" + boolInt(direct), "--rw=randread",
			"--bs=" + strconv.Itoa(row.Size), "--size=" + strconv.FormatInt(fileBytes/int64(row.Size)*int64(row.Size), 10),
			"--iodepth=" + strconv.Itoa(depth), "--time_based", "--runtime=" + strconv.FormatInt(ms, 10) + "ms",
			"--percentile_list=1:50:90:99:99.9", "--output-format=json",
		}
		fctx, cancel := context.WithTimeout(ctx, time.Duration(ms)*time.Millisecond+30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(fctx, bin, args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return nil, fmt.Errorf("fio %v: %w: %s", args, err, bytes.TrimSpace(stderr.Bytes()))
		}
		// fio may print notices before the JSON document.
		if i := bytes.IndexByte(out, '{'); i > 0 {
			out = out[i:]
		}
		var fo fioOutput
		if err := json.Unmarshal(out, &fo); err != nil {
			return nil, fmt.Errorf("fio output: %w", err)
		}
		if len(fo.Jobs) == 0 {
			return nil, errors.New("fio output: no jobs")
		}
		return &fo, nil
	}
	qd1, err := run(1)
	if err != nil {
		r.log.Warn("fio failed; row skipped", "err", err)
		return skipped("fio failed: %v", err)
	}
	rd := qd1.Jobs[0].Read
	pc := func(k string) float64 { return rd.ClatNS.Percentile[k] / 1e3 }
	row.Samples = rd.IOs
	row.MinUS, row.MaxUS, row.MeanUS = rd.ClatNS.Min/1e3, rd.ClatNS.Max/1e3, rd.ClatNS.Mean/1e3
	row.P1US = pc("1.000000")
	row.P50US, row.P90US, row.P99US, row.P999US = pc("50.000000"), pc("90.000000"), pc("99.000000"), pc("99.900000")
	row.Note = "fio --ioengine=io_uring --direct=1 --rw=randread, clat at iodepth 1; MB/s at iodepth " + strconv.Itoa(max(r.cfg.Parallel, 1))
	if r.cfg.Parallel > 0 {
		qdN, err := run(r.cfg.Parallel)
		if err != nil {
			return skipped("fio failed: %v", err)
		}
		row.MBps = qdN.Jobs[0].Read.BwBytes / 1e6
		row.Parallel = r.cfg.Parallel
	}
	return nil
}

func boolInt(b bool) string {
	if b {
		return "1"
	}
	return "0"
}
