package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/datenlord/datenlord-go/iouring"
	"github.com/datenlord/datenlord-go/store"
)

var diskEngines = []string{iouring.KindUring, iouring.KindUringSQPoll, iouring.KindPsync}

// forEachDiskEngine runs f as a subtest per I/O engine.
func forEachDiskEngine(t *testing.T, f func(t *testing.T, engine string)) {
	for _, e := range diskEngines {
		t.Run(e, func(t *testing.T) { f(t, e) })
	}
}

// openDisk opens a disk tier of slots slots of pageSize bytes in dir.
func openDisk(t testing.TB, dir, engine string, pageSize, slots int, reg prometheus.Registerer) *DiskTier {
	t.Helper()
	d, err := NewDiskTier(context.Background(), DiskConfig{
		Dir:        dir,
		Bytes:      int64(diskBlockSize + slots*(diskBlockSize+pageSize)),
		PageSize:   pageSize,
		EngineKind: engine,
		WriteQueue: 512,
		Registerer: reg,
	})
	if err != nil {
		t.Fatal(err)
	}
	if d.Engine() != engine {
		t.Fatalf("engine %q, want %q", d.Engine(), engine)
	}
	if !d.Direct() {
		t.Logf("LOUD: %s does not support O_DIRECT; the disk tier runs buffered", dir)
	}
	return d
}

func closeDisk(t testing.TB, d *DiskTier) {
	t.Helper()
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
}

func flush(t testing.TB, d *DiskTier) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

func pageData(key PageKey, n int) []byte {
	return blockData(key.Block*1000+uint64(key.Index), n)
}

// metricValue sums the samples of a counter or gauge whose labels include
// want.
func diskMetricValue(t testing.TB, g prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			for k, v := range want {
				if labels[k] != v {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			case m.Histogram != nil:
				sum += float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return sum
}

var diskLabel = map[string]string{"tier": "disk"}

func TestDiskTierPutGet(t *testing.T) {
	forEachDiskEngine(t, func(t *testing.T, engine string) {
		ctx := context.Background()
		reg := prometheus.NewRegistry()
		d := openDisk(t, t.TempDir(), engine, 8192, 16, reg)
		defer closeDisk(t, d)
		cases := []struct {
			key PageKey
			n   int
		}{{PageKey{1, 0}, 8192}, {PageKey{1, 1}, 100}, {PageKey{2, 7}, 5000}, {PageKey{3, 0}, 4096}}
		for _, c := range cases {
			if err := d.Put(ctx, c.key, pageData(c.key, c.n), AccessRandom); err != nil {
				t.Fatal(err)
			}
		}
		flush(t, d)
		dst := make([]byte, 8192)
		for _, c := range cases {
			n, ok, err := d.Get(ctx, c.key, dst)
			if err != nil || !ok || n != c.n {
				t.Fatalf("get %v = %d, %v, %v; want %d, true", c.key, n, ok, err, c.n)
			}
			if !bytes.Equal(dst[:n], pageData(c.key, c.n)) {
				t.Fatalf("get %v: wrong bytes", c.key)
			}
		}
		if _, ok, err := d.Get(ctx, PageKey{9, 9}, dst); ok || err != nil {
			t.Fatalf("get of an absent page: %v, %v", ok, err)
		}
		if _, _, err := d.Get(ctx, PageKey{1, 0}, dst[:100]); err == nil {
			t.Fatal("get into a short buffer succeeded")
		}
		if err := d.Put(ctx, PageKey{4, 0}, make([]byte, 8193), AccessRandom); err == nil {
			t.Fatal("put of an oversized page succeeded")
		}
		if got, want := diskMetricValue(t, reg, "datenlord_cache_bytes", diskLabel), float64(8192+100+5000+4096); got != want {
			t.Errorf("bytes gauge %v, want %v", got, want)
		}
		if diskMetricValue(t, reg, "datenlord_cache_read_duration_seconds", diskLabel) < 4 {
			t.Error("read latency histogram has fewer than 4 samples")
		}
		d.DropBlock(ctx, 1)
		if _, ok, _ := d.Get(ctx, PageKey{1, 0}, dst); ok {
			t.Fatal("page of a dropped block still hits")
		}
		if _, ok, _ := d.Get(ctx, PageKey{2, 7}, dst); !ok {
			t.Fatal("page of another block lost by DropBlock")
		}
	})
}

func TestDiskTierEviction(t *testing.T) {
	forEachDiskEngine(t, func(t *testing.T, engine string) {
		ctx := context.Background()
		reg := prometheus.NewRegistry()
		const slots = 8
		d := openDisk(t, t.TempDir(), engine, 4096, slots, reg)
		defer closeDisk(t, d)
		for i := range 20 {
			key := PageKey{uint64(i), 0}
			if err := d.Put(ctx, key, pageData(key, 4096), AccessRandom); err != nil {
				t.Fatal(err)
			}
			flush(t, d) // one at a time: a deterministic LRU order
		}
		if d.Len() != slots {
			t.Fatalf("%d pages cached, want %d", d.Len(), slots)
		}
		dst := make([]byte, 4096)
		for i := range 20 {
			_, ok, err := d.Get(ctx, PageKey{uint64(i), 0}, dst)
			if err != nil {
				t.Fatal(err)
			}
			if want := i >= 20-slots; ok != want {
				t.Errorf("page %d: hit %v, want %v", i, ok, want)
			}
		}
		if got := diskMetricValue(t, reg, "datenlord_cache_evictions_total", diskLabel); got != 20-slots {
			t.Errorf("evictions %v, want %d", got, 20-slots)
		}
		if fi, err := os.Stat(d.Path()); err != nil || fi.Size() != int64(diskBlockSize+slots*2*4096) {
			t.Errorf("pages.dat size %v (%v), want %d: the file must not grow", fi.Size(), err, diskBlockSize+slots*2*4096)
		}
	})
}

func TestDiskTierRestartWarm(t *testing.T) {
	forEachDiskEngine(t, func(t *testing.T, engine string) {
		ctx := context.Background()
		dir := t.TempDir()
		d := openDisk(t, dir, engine, 8192, 64, nil)
		for i := range 40 {
			key := PageKey{uint64(i / 4), uint32(i % 4)}
			if err := d.Put(ctx, key, pageData(key, 8192-i), AccessRandom); err != nil {
				t.Fatal(err)
			}
		}
		closeDisk(t, d) // writes what is still queued

		d = openDisk(t, dir, engine, 8192, 64, nil)
		if d.Len() != 40 {
			t.Fatalf("after restart %d pages indexed, want 40", d.Len())
		}
		dst := make([]byte, 8192)
		for i := range 40 {
			key := PageKey{uint64(i / 4), uint32(i % 4)}
			n, ok, err := d.Get(ctx, key, dst)
			if err != nil || !ok || !bytes.Equal(dst[:n], pageData(key, 8192-i)) {
				t.Fatalf("after restart get %v: %d, %v, %v (or wrong bytes)", key, n, ok, err)
			}
		}
		// New pages go to free slots, not over the warm ones.
		if err := d.Put(ctx, PageKey{100, 0}, pageData(PageKey{100, 0}, 10), AccessRandom); err != nil {
			t.Fatal(err)
		}
		flush(t, d)
		if d.Len() != 41 {
			t.Fatalf("%d pages after one more put, want 41", d.Len())
		}
		closeDisk(t, d)

		// Fewer slots: the pages in the remaining slots survive.
		d = openDisk(t, dir, engine, 8192, 16, nil)
		if d.Len() == 0 || d.Len() > 16 {
			t.Fatalf("after shrinking to 16 slots %d pages indexed", d.Len())
		}
		closeDisk(t, d)
		// Another page size: the file is reinitialised, nothing is misread.
		d = openDisk(t, dir, engine, 4096, 16, nil)
		if d.Len() != 0 {
			t.Fatalf("after a page size change %d pages indexed, want 0", d.Len())
		}
		closeDisk(t, d)
	})
}

// TestDiskTierConcurrent races Puts, Gets and DropBlocks on a small tier
// (run with -race): any hit must return the right bytes.
func TestDiskTierConcurrent(t *testing.T) {
	forEachDiskEngine(t, func(t *testing.T, engine string) {
		ctx := context.Background()
		d := openDisk(t, t.TempDir(), engine, 4096, 32, nil)
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for w := range 8 {
			wg.Go(func() {
				r := rand.New(rand.NewPCG(uint64(w), 1))
				dst := make([]byte, 4096)
				for range 300 {
					key := PageKey{uint64(r.IntN(8)), uint32(r.IntN(16))}
					switch op := r.IntN(10); {
					case op < 5:
						_ = d.Put(ctx, key, pageData(key, 4096), AccessRandom)
					case op < 9:
						n, ok, err := d.Get(ctx, key, dst)
						if err != nil {
							errs <- err
							return
						}
						if ok && !bytes.Equal(dst[:n], pageData(key, 4096)) {
							errs <- fmt.Errorf("get %v returned wrong bytes", key)
							return
						}
					default:
						d.DropBlock(ctx, key.Block)
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		closeDisk(t, d)
		if err := d.Put(ctx, PageKey{1, 1}, pageData(PageKey{1, 1}, 10), AccessRandom); err != nil {
			t.Fatal(err)
		}
		if _, ok, _ := d.Get(ctx, PageKey{1, 1}, make([]byte, 4096)); ok {
			t.Fatal("get after Close hit")
		}
	})
}

// slotOf returns the slot holding key.
func slotOf(t testing.TB, d *DiskTier, key PageKey) int32 {
	t.Helper()
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.index[key]
	if !ok {
		t.Fatalf("page %v not in the disk tier", key)
	}
	return s
}

// corruptAt flips the bytes at off in pages.dat through a separate,
// buffered file descriptor (as a failing device or a stray write would).
func corruptAt(t testing.TB, path string, off int64, n int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	for i := range b {
		b[i] ^= 0xa5
	}
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

// TestDiskTierAcceptance is the acceptance test of the disk tier: a Cache
// with memory and disk tiers over a real file:// store reads a multi-MiB
// block set; after everything is closed and reopened with a fresh memory
// tier and the same disk directory, re-reading it all makes no store GET.
// Then corrupted page bytes and a corrupted slot header are each caught:
// the read returns the right bytes (from the store) and the checksum
// failure metric rises.
func TestDiskTierAcceptance(t *testing.T) {
	forEachDiskEngine(t, func(t *testing.T, engine string) {
		ctx := context.Background()
		storeDir, diskDir := t.TempDir(), t.TempDir()
		const pageSize = 16 << 10
		const blockSize = 512 << 10
		const blocks = 8 // 4 MiB, 256 pages
		lengths := make([]int, blocks)
		for i := range lengths {
			lengths[i] = blockSize - i*1000 // short last pages
		}
		open := func() (*Cache, *DiskTier, store.Store, *prometheus.Registry) {
			reg := prometheus.NewRegistry()
			s, err := store.Open(ctx, "file://"+storeDir, store.Options{Registerer: reg})
			if err != nil {
				t.Fatal(err)
			}
			d := openDisk(t, diskDir, engine, pageSize, 320, reg)
			c, err := New(Config{PageSize: pageSize, MemBytes: 1 << 20, Registerer: reg}, s, d)
			if err != nil {
				t.Fatal(err)
			}
			return c, d, s, reg
		}
		readAll := func(c *Cache) {
			t.Helper()
			dst := make([]byte, pageSize)
			for b, blen := range lengths {
				id := uint64(b + 1)
				want := blockData(id, blen)
				for idx := 0; idx*pageSize < blen; idx++ {
					plen := min(pageSize, blen-idx*pageSize)
					n, err := c.ReadPage(ctx, PageKey{id, uint32(idx)}, plen, dst, AccessRandom)
					if err != nil || n != plen {
						t.Fatalf("read block %d page %d: %d, %v", id, idx, n, err)
					}
					if !bytes.Equal(dst[:n], want[idx*pageSize:idx*pageSize+n]) {
						t.Fatalf("block %d page %d: wrong bytes", id, idx)
					}
				}
			}
		}
		storeGets := func(reg *prometheus.Registry) float64 {
			return diskMetricValue(t, reg, "datenlord_store_requests_total", map[string]string{"op": "get"})
		}

		c, d, s, reg := open()
		for i, n := range lengths {
			if err := s.Put(ctx, uint64(i+1), blockData(uint64(i+1), n)); err != nil {
				t.Fatal(err)
			}
		}
		readAll(c)
		if got := storeGets(reg); got != 256 {
			t.Fatalf("cold read: %v store GETs, want 256 (one per page)", got)
		}
		flush(t, d)
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		_ = s.Close()

		c, d, s, reg = open()
		defer func() { _ = c.Close(); _ = s.Close() }()
		if d.Len() != 256 {
			t.Fatalf("disk tier reopened with %d pages, want 256", d.Len())
		}
		start := time.Now()
		readAll(c)
		t.Logf("warm re-read of 4 MiB from the %s disk tier: %v", engine, time.Since(start))
		if got := storeGets(reg); got != 0 {
			t.Fatalf("warm restart: %v store GETs, want 0", got)
		}
		if got := diskMetricValue(t, reg, "datenlord_cache_hits_total", diskLabel); got != 256 {
			t.Errorf("disk hits %v, want 256", got)
		}

		// Corrupt page bytes and, in another slot, the header. The pages
		// are read through a cache with an empty memory tier so that the
		// disk tier is asked. A Get reads only the page and verifies it
		// against the CRC in the index: the corrupted page is caught at
		// once (a checksum failure and a refetch from the store); the
		// corrupted header cannot make a Get return wrong bytes (its page is
		// intact and verified) and is caught when the index is rebuilt.
		dataKey, hdrKey := PageKey{3, 5}, PageKey{4, 6}
		corruptAt(t, d.Path(), d.slotOff(slotOf(t, d, dataKey))+diskBlockSize+100, 16)
		corruptAt(t, d.Path(), d.slotOff(slotOf(t, d, hdrKey))+dhBlock, 4)
		c2, err := New(Config{PageSize: pageSize, MemBytes: 0, Registerer: reg}, s, d)
		if err != nil {
			t.Fatal(err)
		}
		dst := make([]byte, pageSize)
		wantPage := func(key PageKey) []byte {
			return blockData(key.Block, lengths[key.Block-1])[int(key.Index)*pageSize:][:pageSize]
		}
		for i, tc := range []struct {
			key          PageKey
			failures     float64 // checksum failures the read adds
			gets         float64 // store GETs after the read
			corruptWhere string
		}{{dataKey, 1, 1, "page"}, {hdrKey, 0, 1, "header"}} {
			before := diskMetricValue(t, reg, "datenlord_cache_checksum_failures_total", diskLabel)
			n, err := c2.ReadPage(ctx, tc.key, pageSize, dst, AccessRandom)
			if err != nil || n != pageSize {
				t.Fatalf("read of corrupted %v: %d, %v", tc.key, n, err)
			}
			if !bytes.Equal(dst[:n], wantPage(tc.key)) {
				t.Fatalf("corruption %d (%s): read returned wrong bytes", i, tc.corruptWhere)
			}
			if after := diskMetricValue(t, reg, "datenlord_cache_checksum_failures_total", diskLabel); after != before+tc.failures {
				t.Errorf("corruption %d (%s): checksum failures %v -> %v, want +%v", i, tc.corruptWhere, before, after, tc.failures)
			}
			if got := storeGets(reg); got != tc.gets {
				t.Errorf("corruption %d (%s): %v store GETs, want %v", i, tc.corruptWhere, got, tc.gets)
			}
		}
		flush(t, d) // the refetched page was offered again; it is good now
		for _, key := range []PageKey{dataKey, hdrKey} {
			if _, ok, err := d.Get(ctx, key, dst); !ok || err != nil {
				t.Errorf("%v not in the disk tier: %v, %v", key, ok, err)
			}
		}

		// Restart: the rebuild catches the corrupted header, frees its
		// slot, and the page is refetched once.
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		_ = s.Close()
		c, d, s, reg = open()
		if got := diskMetricValue(t, reg, "datenlord_cache_checksum_failures_total", diskLabel); got != 1 {
			t.Errorf("restart after header corruption: checksum failures %v, want 1", got)
		}
		if d.Len() != 255 {
			t.Errorf("restart after header corruption: %d pages, want 255", d.Len())
		}
		n, err := c.ReadPage(ctx, hdrKey, pageSize, dst, AccessRandom)
		if err != nil || n != pageSize || !bytes.Equal(dst[:n], wantPage(hdrKey)) {
			t.Fatalf("read of %v after restart: %d, %v (right bytes: %v)", hdrKey, n, err, bytes.Equal(dst[:n], wantPage(hdrKey)))
		}
		if got := storeGets(reg); got != 1 {
			t.Errorf("restart after header corruption: %v store GETs, want 1 (the page refetched)", got)
		}
	})
}

// TestDiskTierCorruptHeaderAtRestart corrupts a header while the tier is
// closed: the scan frees the slot and counts it.
func TestDiskTierCorruptHeaderAtRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openDisk(t, dir, iouring.KindPsync, 4096, 8, nil)
	for i := range 4 {
		key := PageKey{1, uint32(i)}
		_ = d.Put(ctx, key, pageData(key, 4096), AccessRandom)
	}
	flush(t, d)
	bad := slotOf(t, d, PageKey{1, 2})
	closeDisk(t, d)
	corruptAt(t, filepath.Join(dir, diskFileName), d.slotOff(bad)+dhGen, 8)
	reg := prometheus.NewRegistry()
	d = openDisk(t, dir, iouring.KindPsync, 4096, 8, reg)
	defer closeDisk(t, d)
	if d.Len() != 3 {
		t.Fatalf("%d pages after restart, want 3", d.Len())
	}
	if got := diskMetricValue(t, reg, "datenlord_cache_checksum_failures_total", diskLabel); got != 1 {
		t.Fatalf("checksum failures %v, want 1", got)
	}
}

// TestDiskTierFullDisk puts the cache directory on a 1 MiB tmpfs: a tier
// bigger than the file system fails at open with ENOSPC (preallocation
// makes running out of space an open-time error, not a write-time one),
// and one that fits works (buffered if tmpfs refuses O_DIRECT).
func TestDiskTierFullDisk(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("SKIP: cannot mount a 1 MiB tmpfs to fill (%v); needs root with CAP_SYS_ADMIN", err)
	}
	defer func() {
		// An io_uring ring is torn down asynchronously after its fd is
		// closed and may hold the file system busy for a moment.
		for range 200 {
			if err := unix.Unmount(dir, 0); !errors.Is(err, unix.EBUSY) {
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	_, err := NewDiskTier(context.Background(), DiskConfig{Dir: dir, Bytes: 8 << 20, PageSize: 4096, EngineKind: iouring.KindAuto})
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("8 MiB tier on a 1 MiB file system: %v, want ENOSPC", err)
	}
	t.Logf("full disk: %v", err)
	d, err := NewDiskTier(context.Background(), DiskConfig{Dir: dir, Bytes: 512 << 10, PageSize: 4096, EngineKind: iouring.KindAuto})
	if err != nil {
		t.Fatal(err)
	}
	defer closeDisk(t, d)
	ctx := context.Background()
	_ = d.Put(ctx, PageKey{1, 0}, pageData(PageKey{1, 0}, 4096), AccessRandom)
	flush(t, d)
	if _, ok, err := d.Get(ctx, PageKey{1, 0}, make([]byte, 4096)); !ok || err != nil {
		t.Fatalf("get on tmpfs: %v, %v", ok, err)
	}
}

func TestDiskTierConfigErrors(t *testing.T) {
	ctx := context.Background()
	for _, cfg := range []DiskConfig{
		{Dir: t.TempDir(), Bytes: 1 << 20, PageSize: 1000},
		{Dir: t.TempDir(), Bytes: 4096, PageSize: 4096},
		{Dir: "", Bytes: 1 << 20, PageSize: 4096},
		{Dir: t.TempDir(), Bytes: 1 << 20, PageSize: 4096, EngineKind: "spdk"},
	} {
		if d, err := NewDiskTier(ctx, cfg); err == nil {
			_ = d.Close()
			t.Errorf("config %+v accepted", cfg)
		}
	}
}

// fioPath returns fio's path, or "" when it is not installed.
func fioPath() string {
	p, err := exec.LookPath("fio")
	if err != nil {
		return ""
	}
	return p
}

// TestDiskTierTornPageAtRestart models a torn slot write found at restart:
// the header is intact (so the rebuild indexes the slot with its data
// CRC) but the page bytes are not what the header describes. The Get,
// which reads only the page, must catch it against the indexed CRC: a
// miss and a checksum failure, never the wrong bytes.
func TestDiskTierTornPageAtRestart(t *testing.T) {
	forEachDiskEngine(t, func(t *testing.T, engine string) {
		ctx := context.Background()
		dir := t.TempDir()
		d := openDisk(t, dir, engine, 8192, 8, nil)
		key := PageKey{1, 0}
		_ = d.Put(ctx, key, pageData(key, 8192), AccessRandom)
		flush(t, d)
		s := slotOf(t, d, key)
		closeDisk(t, d)
		corruptAt(t, filepath.Join(dir, diskFileName), d.slotOff(s)+diskBlockSize+4096, 4096) // second sector torn
		reg := prometheus.NewRegistry()
		d = openDisk(t, dir, engine, 8192, 8, reg)
		defer closeDisk(t, d)
		if d.Len() != 1 {
			t.Fatalf("%d pages after restart, want 1 (the header is intact)", d.Len())
		}
		if n, ok, err := d.Get(ctx, key, make([]byte, 8192)); ok || err != nil {
			t.Fatalf("get of a torn page: %d, %v, %v; want a miss", n, ok, err)
		}
		if got := diskMetricValue(t, reg, "datenlord_cache_checksum_failures_total", diskLabel); got != 1 {
			t.Fatalf("checksum failures %v, want 1", got)
		}
		if d.Len() != 0 {
			t.Fatalf("torn page still indexed")
		}
	})
}
