// Package fsbench benchmarks any mounted file system through plain POSIX
// calls, in the shape of `juicefs bench`: big-file sequential write and
// read throughput, random 4 KiB write and read IOPS inside that file, and
// small-file create (write), read, stat and unlink rates, from N threads,
// each in its own directory under a fresh scratch directory that is
// removed at the end. Nothing is specific to DatenLord, so a DatenLord
// mount and another file system on the same machine can be compared side
// by side. The node binary exposes it as `datenlord-node bench fs PATH`.
//
// Caches: the big file is fsynced after writing and, before each read
// phase, the OS page cache is asked to drop it (posix_fadvise DONTNEED);
// a FUSE file system keeps its own cache, which the figures include.
package fsbench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Config sizes a Run. Zero fields take the defaults in brackets.
type Config struct {
	// Path is a directory on the file system to measure.
	Path string
	// Threads run the workload concurrently, each on its own files [1].
	Threads int
	// BigFileSize is the size of each thread's big file [256 MiB];
	// BlockSize the size of its sequential reads and writes [1 MiB].
	BigFileSize int64
	BlockSize   int
	// RandomSize is the size of a random read or write [4 KiB];
	// RandomOps how many of each every thread does [2000], stopping early
	// after RandomTime [10s] per phase.
	RandomSize int
	RandomOps  int
	RandomTime time.Duration
	// SmallFileSize and SmallFiles: the small files of each thread
	// [128 KiB x 100].
	SmallFileSize int
	SmallFiles    int
	// Progress, when set, is called at the start of each phase.
	Progress func(i, n int, phase string)
}

func (c *Config) fill() {
	if c.Threads <= 0 {
		c.Threads = 1
	}
	if c.BigFileSize <= 0 {
		c.BigFileSize = 256 << 20
	}
	if c.BlockSize <= 0 {
		c.BlockSize = 1 << 20
	}
	if c.RandomSize <= 0 {
		c.RandomSize = 4 << 10
	}
	if c.RandomOps <= 0 {
		c.RandomOps = 2000
	}
	if c.RandomTime <= 0 {
		c.RandomTime = 10 * time.Second
	}
	if c.SmallFileSize <= 0 {
		c.SmallFileSize = 128 << 10
	}
	if c.SmallFiles <= 0 {
		c.SmallFiles = 100
	}
}

// Item is one line of the result: Value in Unit (MiB/s, IOPS, files/s)
// and the average Cost per operation in CostUnit (s/file, ms/op,
// ms/file), as juicefs bench prints them.
type Item struct {
	Name     string  `json:"name"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	MiBps    float64 `json:"mib_per_s,omitempty"`
	Cost     float64 `json:"cost"`
	CostUnit string  `json:"cost_unit"`
	Ops      int     `json:"ops"`
	Bytes    int64   `json:"bytes,omitempty"`
	Seconds  float64 `json:"seconds"`
}

// Result is a Run's outcome.
type Result struct {
	Path          string    `json:"path"`
	Threads       int       `json:"threads"`
	BigFileSize   int64     `json:"big_file_size"`
	BlockSize     int       `json:"block_size"`
	RandomSize    int       `json:"random_size"`
	RandomOps     int       `json:"random_ops"`
	SmallFileSize int       `json:"small_file_size"`
	SmallFiles    int       `json:"small_files"`
	Started       time.Time `json:"started"`
	Items         []Item    `json:"items"`
}

// Run measures the file system at cfg.Path.
func Run(ctx context.Context, cfg Config) (*Result, error) {
	cfg.fill()
	if st, err := os.Stat(cfg.Path); err != nil {
		return nil, fmt.Errorf("bench fs: %w", err)
	} else if !st.IsDir() {
		return nil, fmt.Errorf("bench fs: %s is not a directory", cfg.Path)
	}
	if cfg.BigFileSize < int64(cfg.RandomSize) {
		return nil, fmt.Errorf("bench fs: big file (%d bytes) smaller than a random I/O (%d)", cfg.BigFileSize, cfg.RandomSize)
	}
	tag := make([]byte, 4)
	_, _ = rand.Read(tag)
	root := filepath.Join(cfg.Path, "__datenlord_bench_"+hex.EncodeToString(tag))
	if err := os.Mkdir(root, 0o755); err != nil {
		return nil, fmt.Errorf("bench fs: %w", err)
	}
	defer os.RemoveAll(root)
	res := &Result{Path: cfg.Path, Threads: cfg.Threads, BigFileSize: cfg.BigFileSize, BlockSize: cfg.BlockSize,
		RandomSize: cfg.RandomSize, RandomOps: cfg.RandomOps, SmallFileSize: cfg.SmallFileSize, SmallFiles: cfg.SmallFiles,
		Started: time.Now().UTC()}
	th := make([]*thread, cfg.Threads)
	for i := range th {
		dir := filepath.Join(root, fmt.Sprintf("t%d", i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, fmt.Errorf("bench fs: %w", err)
		}
		th[i] = &thread{cfg: &cfg, dir: dir, id: i, buf: make([]byte, max(cfg.BlockSize, cfg.SmallFileSize, cfg.RandomSize))}
		fillRandom(th[i].buf)
	}
	rnd := sizeName(cfg.RandomSize)
	steps := []struct {
		name string
		run  func(t *thread) (ops int, bytes int64, err error)
		unit string // MiB/s, IOPS or files/s
	}{
		{"Write big file", (*thread).writeBig, "MiB/s"}, {"Read big file", (*thread).readBig, "MiB/s"},
		{"Random write " + rnd, (*thread).randWrite, "IOPS"}, {"Random read " + rnd, (*thread).randRead, "IOPS"},
		{"Write small file", (*thread).writeSmall, "files/s"}, {"Read small file", (*thread).readSmall, "files/s"},
		{"Stat file", (*thread).statSmall, "files/s"}, {"Unlink file", (*thread).unlinkSmall, "files/s"},
	}
	for i, st := range steps {
		name := st.name
		if cfg.Progress != nil {
			cfg.Progress(i, len(steps), name)
		}
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("bench fs: %w", err)
		}
		var wg sync.WaitGroup
		ops := make([]int, len(th))
		nbytes := make([]int64, len(th))
		errs := make([]error, len(th))
		start := time.Now()
		for j, t := range th {
			wg.Go(func() { ops[j], nbytes[j], errs[j] = st.run(t) })
		}
		wg.Wait()
		secs := time.Since(start).Seconds()
		item := Item{Name: name, Unit: st.unit, Seconds: secs}
		for j := range th {
			if errs[j] != nil {
				return nil, fmt.Errorf("bench fs: %s (thread %d): %w", name, j, errs[j])
			}
			item.Ops += ops[j]
			item.Bytes += nbytes[j]
		}
		if secs <= 0 || item.Ops == 0 {
			secs = 1e-9
		}
		item.MiBps = float64(item.Bytes) / secs / (1 << 20)
		perOp := secs * float64(cfg.Threads) / float64(max(item.Ops, 1)) // each thread's average cost
		switch st.unit {
		case "MiB/s":
			item.Value = item.MiBps
			item.Cost, item.CostUnit = secs, "s/file" // every thread does one file at once
		case "IOPS":
			item.Value = float64(item.Ops) / secs
			item.Cost, item.CostUnit = perOp*1e3, "ms/op"
		default:
			item.Value = float64(item.Ops) / secs
			item.Cost, item.CostUnit = perOp*1e3, "ms/file"
		}
		res.Items = append(res.Items, item)
	}
	if cfg.Progress != nil {
		cfg.Progress(len(steps), len(steps), "done")
	}
	return res, nil
}

// thread is one worker's files and buffer.
type thread struct {
	cfg *Config
	dir string
	id  int
	buf []byte
}

func (t *thread) bigPath() string        { return filepath.Join(t.dir, "bigfile") }
func (t *thread) smallPath(i int) string { return filepath.Join(t.dir, fmt.Sprintf("small.%d", i)) }

// dropCache asks the OS to forget the cached pages of path (best effort).
func dropCache(f *os.File) {
	_ = unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

func (t *thread) writeBig() (int, int64, error) {
	f, err := os.OpenFile(t.bigPath(), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return 0, 0, err
	}
	var done int64
	for done < t.cfg.BigFileSize {
		n := int(min(int64(t.cfg.BlockSize), t.cfg.BigFileSize-done))
		if _, err := f.Write(t.buf[:n]); err != nil {
			_ = f.Close()
			return 0, done, fmt.Errorf("write %s: %w", f.Name(), err)
		}
		done += int64(n)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return 0, done, fmt.Errorf("fsync %s: %w", f.Name(), err)
	}
	dropCache(f)
	if err := f.Close(); err != nil {
		return 0, done, fmt.Errorf("close %s: %w", t.bigPath(), err)
	}
	return 1, done, nil
}

func (t *thread) readBig() (int, int64, error) {
	f, err := os.Open(t.bigPath())
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	var done int64
	for {
		n, err := f.Read(t.buf[:t.cfg.BlockSize])
		done += int64(n)
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, done, fmt.Errorf("read %s: %w", f.Name(), err)
		}
	}
	if done != t.cfg.BigFileSize {
		return 0, done, fmt.Errorf("read %s: %d bytes, want %d", f.Name(), done, t.cfg.BigFileSize)
	}
	dropCache(f)
	return 1, done, nil
}

// randOffset returns the i-th random, RandomSize-aligned offset.
func (t *thread) randOffset(i int) int64 {
	slots := t.cfg.BigFileSize / int64(t.cfg.RandomSize)
	x := uint64(i+1)*0x9E3779B97F4A7C15 ^ uint64(t.id)<<32
	x ^= x >> 31
	x *= 0xBF58476D1CE4E5B9
	x ^= x >> 29
	return int64(x%uint64(slots)) * int64(t.cfg.RandomSize)
}

func (t *thread) randWrite() (int, int64, error) {
	f, err := os.OpenFile(t.bigPath(), os.O_WRONLY, 0)
	if err != nil {
		return 0, 0, err
	}
	deadline := time.Now().Add(t.cfg.RandomTime)
	ops := 0
	for ; ops < t.cfg.RandomOps && (ops&15 != 15 || time.Now().Before(deadline)); ops++ {
		if _, err := f.WriteAt(t.buf[:t.cfg.RandomSize], t.randOffset(ops)); err != nil {
			_ = f.Close()
			return ops, 0, fmt.Errorf("pwrite %s: %w", f.Name(), err)
		}
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return ops, 0, fmt.Errorf("fsync %s: %w", f.Name(), err)
	}
	dropCache(f)
	if err := f.Close(); err != nil {
		return ops, 0, fmt.Errorf("close %s: %w", t.bigPath(), err)
	}
	return ops, int64(ops) * int64(t.cfg.RandomSize), nil
}

func (t *thread) randRead() (int, int64, error) {
	f, err := os.Open(t.bigPath())
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	deadline := time.Now().Add(t.cfg.RandomTime)
	ops := 0
	for ; ops < t.cfg.RandomOps && (ops&15 != 15 || time.Now().Before(deadline)); ops++ {
		// Different offsets from the writes: those may still be cached.
		if _, err := f.ReadAt(t.buf[:t.cfg.RandomSize], t.randOffset(ops+1<<30)); err != nil {
			return ops, 0, fmt.Errorf("pread %s: %w", f.Name(), err)
		}
	}
	return ops, int64(ops) * int64(t.cfg.RandomSize), nil
}

func (t *thread) writeSmall() (int, int64, error) {
	for i := range t.cfg.SmallFiles {
		f, err := os.OpenFile(t.smallPath(i), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			return i, 0, err
		}
		if _, err := f.Write(t.buf[:t.cfg.SmallFileSize]); err != nil {
			_ = f.Close()
			return i, 0, fmt.Errorf("write %s: %w", f.Name(), err)
		}
		if err := f.Close(); err != nil {
			return i, 0, fmt.Errorf("close %s: %w", t.smallPath(i), err)
		}
	}
	return t.cfg.SmallFiles, int64(t.cfg.SmallFiles) * int64(t.cfg.SmallFileSize), nil
}

func (t *thread) readSmall() (int, int64, error) {
	for i := range t.cfg.SmallFiles {
		f, err := os.Open(t.smallPath(i))
		if err != nil {
			return i, 0, err
		}
		n, err := io.ReadFull(f, t.buf[:t.cfg.SmallFileSize])
		_ = f.Close()
		if err != nil {
			return i, 0, fmt.Errorf("read %s: %d bytes: %w", t.smallPath(i), n, err)
		}
	}
	return t.cfg.SmallFiles, int64(t.cfg.SmallFiles) * int64(t.cfg.SmallFileSize), nil
}

func (t *thread) statSmall() (int, int64, error) {
	for i := range t.cfg.SmallFiles {
		st, err := os.Stat(t.smallPath(i))
		if err != nil {
			return i, 0, err
		}
		if st.Size() != int64(t.cfg.SmallFileSize) {
			return i, 0, fmt.Errorf("stat %s: size %d, want %d", t.smallPath(i), st.Size(), t.cfg.SmallFileSize)
		}
	}
	return t.cfg.SmallFiles, 0, nil
}

func (t *thread) unlinkSmall() (int, int64, error) {
	for i := range t.cfg.SmallFiles {
		if err := os.Remove(t.smallPath(i)); err != nil {
			return i, 0, err
		}
	}
	return t.cfg.SmallFiles, 0, nil
}

func fillRandom(b []byte) {
	x := uint64(0x2545F4914F6CDD1D)
	for i := range b {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i] = byte(x)
	}
}

// WriteTable prints the result as juicefs bench does: a boxed table of
// ITEM, VALUE and COST.
func WriteTable(w io.Writer, r *Result) error {
	fmt.Fprintf(w, "Benchmark on %s: threads %d, big file %s (block %s), random %s x %d, small file %s x %d\n",
		r.Path, r.Threads, sizeName64(r.BigFileSize), sizeName(r.BlockSize), sizeName(r.RandomSize), r.RandomOps,
		sizeName(r.SmallFileSize), r.SmallFiles)
	rows := [][3]string{{"ITEM", "VALUE", "COST"}}
	for _, it := range r.Items {
		val := fmt.Sprintf("%.2f %s", it.Value, it.Unit)
		if it.Unit == "IOPS" {
			val = fmt.Sprintf("%.0f IOPS (%.1f MiB/s)", it.Value, it.MiBps)
		}
		rows = append(rows, [3]string{it.Name, val, fmt.Sprintf("%.2f %s", it.Cost, it.CostUnit)})
	}
	var width [3]int
	for _, r := range rows {
		for i, c := range r {
			width[i] = max(width[i], len(c)+2)
		}
	}
	sep := "+"
	for _, wd := range width {
		sep += fmt.Sprintf("%s+", dashes(wd))
	}
	var err error
	p := func(format string, args ...any) {
		if err == nil {
			_, err = fmt.Fprintf(w, format, args...)
		}
	}
	p("%s\n", sep)
	for i, r := range rows {
		if i == 0 {
			p("|%s|%s|%s|\n", center(r[0], width[0]), center(r[1], width[1]), center(r[2], width[2]))
			p("%s\n", sep)
			continue
		}
		p("|%*s |%*s |%*s |\n", width[0]-1, r[0], width[1]-1, r[1], width[2]-1, r[2])
	}
	p("%s\n", sep)
	if err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	return nil
}

// WriteJSON writes the result as indented JSON to w.
func WriteJSON(w io.Writer, r *Result) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		return fmt.Errorf("encode result: %w", err)
	}
	return nil
}

func dashes(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = '-'
	}
	return string(b)
}

func center(s string, w int) string {
	left := (w - len(s)) / 2
	return fmt.Sprintf("%*s%s%*s", left, "", s, w-left-len(s), "")
}

func sizeName(n int) string { return sizeName64(int64(n)) }

func sizeName64(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d B", n)
}
