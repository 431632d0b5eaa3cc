package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/datenlord/datenlord-go/store"
	"github.com/prometheus/client_golang/prometheus"
)

const testPage = 4096

// countingBackend is the real file:// store with its reads counted and,
// optionally, held at a gate.
type countingBackend struct {
	store.Store
	reads atomic.Int64
	gate  chan struct{} // when set, ReadAt waits for it to close
}

func (b *countingBackend) ReadAt(ctx context.Context, id uint64, off int64, dst []byte) (int, error) {
	b.reads.Add(1)
	if b.gate != nil {
		<-b.gate
	}
	return b.Store.ReadAt(ctx, id, off, dst)
}

func newBackend(t testing.TB) *countingBackend {
	t.Helper()
	s, err := store.Open(context.Background(), "file://"+t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return &countingBackend{Store: s}
}

func blockData(id uint64, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(uint64(i)*31 + id*7 + uint64(i>>12))
	}
	return b
}

// putBlocks stores blocks of the given lengths under ids 1..n.
func putBlocks(t testing.TB, b *countingBackend, lengths ...int) {
	t.Helper()
	for i, n := range lengths {
		id := uint64(i + 1)
		if err := b.Put(context.Background(), id, blockData(id, n)); err != nil {
			t.Fatal(err)
		}
	}
}

func newCache(t testing.TB, memBytes int64, b Backend, reg prometheus.Registerer) *Cache {
	t.Helper()
	c, err := New(Config{PageSize: testPage, MemBytes: memBytes, Registerer: reg}, b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// pageLen is the length of page idx of a block of blockLen bytes.
func pageLen(blockLen int, idx uint32) int {
	return min(testPage, blockLen-int(idx)*testPage)
}

// readPage reads a page and checks its bytes against the block content.
func readPage(t testing.TB, c *Cache, block uint64, blockLen int, idx uint32) {
	t.Helper()
	n := pageLen(blockLen, idx)
	dst := make([]byte, testPage)
	got, err := c.ReadPage(context.Background(), PageKey{block, idx}, n, dst, AccessRandom)
	if err != nil {
		t.Fatalf("ReadPage(%d,%d): %v", block, idx, err)
	}
	want := blockData(block, blockLen)[int(idx)*testPage:][:n]
	if got != n || !bytes.Equal(dst[:got], want) {
		t.Fatalf("ReadPage(%d,%d) returned %d wrong bytes", block, idx, got)
	}
}

func metricValue(t testing.TB, reg *prometheus.Registry, name, tier string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "tier" && lp.GetValue() == tier {
					if g := m.GetGauge(); g != nil {
						return g.GetValue()
					}
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func slotBytes(n int) int64 { return int64(n) * (slotHeaderSize + testPage) }

func TestReadPage(t *testing.T) {
	type read struct {
		block uint64
		idx   uint32
	}
	const blockLen = 10_000 // pages of 4096, 4096, 1808
	tests := []struct {
		name      string
		memSlots  int
		reads     []read
		wantReads int64 // backend reads
		wantHits  float64
	}{
		{"miss then hit", 8, []read{{1, 0}, {1, 0}, {1, 0}}, 1, 2},
		{"every page once", 8, []read{{1, 0}, {1, 1}, {1, 2}, {2, 0}}, 4, 0},
		{"short last page hits", 8, []read{{1, 2}, {1, 2}}, 1, 1},
		{"two blocks interleaved", 8, []read{{1, 0}, {2, 0}, {1, 0}, {2, 0}}, 2, 2},
		{"cache of one slot thrashes", 1, []read{{1, 0}, {2, 0}, {1, 0}, {2, 0}}, 4, 0},
		{"no memory at all", 0, []read{{1, 0}, {1, 0}}, 2, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newBackend(t)
			putBlocks(t, b, blockLen, blockLen)
			reg := prometheus.NewRegistry()
			c := newCache(t, slotBytes(tt.memSlots), b, reg)
			for _, r := range tt.reads {
				readPage(t, c, r.block, blockLen, r.idx)
			}
			if got := b.reads.Load(); got != tt.wantReads {
				t.Errorf("backend reads = %d, want %d", got, tt.wantReads)
			}
			if got := metricValue(t, reg, "datenlord_cache_hits_total", "memory"); got != tt.wantHits {
				t.Errorf("hits = %v, want %v", got, tt.wantHits)
			}
			wantMisses := float64(len(tt.reads)) - tt.wantHits
			if got := metricValue(t, reg, "datenlord_cache_misses_total", "memory"); got != wantMisses {
				t.Errorf("misses = %v, want %v", got, wantMisses)
			}
		})
	}
}

func TestReadPageErrors(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	putBlocks(t, b, 10_000)
	c := newCache(t, slotBytes(8), b, nil)
	dst := make([]byte, testPage)
	tests := []struct {
		name   string
		key    PageKey
		length int
		dst    []byte
		want   error // nil: any error
	}{
		{"missing block", PageKey{99, 0}, testPage, dst, store.ErrNotFound},
		{"block shorter than the map says", PageKey{1, 2}, testPage, dst, ErrShortPage},
		{"page past the end", PageKey{1, 3}, 100, dst, ErrShortPage},
		{"zero length", PageKey{1, 0}, 0, dst, nil},
		{"length over page size", PageKey{1, 0}, testPage + 1, make([]byte, 2*testPage), nil},
		{"small buffer", PageKey{1, 0}, testPage, dst[:100], nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := c.ReadPage(ctx, tt.key, tt.length, tt.dst, AccessRandom)
			if err == nil || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Fatalf("ReadPage = %d, %v; want error %v", n, err, tt.want)
			}
			t.Logf("error: %v", err)
		})
	}
	// Nothing was cached by the failures.
	if n := c.memory.cachedBytes(); n != 0 {
		t.Fatalf("failed reads cached %d bytes", n)
	}
}

func TestMemoryBoundAndLazyArena(t *testing.T) {
	b := newBackend(t)
	const blockLen = 64 * testPage
	putBlocks(t, b, blockLen, blockLen)
	reg := prometheus.NewRegistry()
	memBytes := slotBytes(10) + 1000 // not a whole number of slots
	c := newCache(t, memBytes, b, reg)
	for block := uint64(1); block <= 2; block++ {
		for idx := uint32(0); idx < 64; idx++ {
			readPage(t, c, block, blockLen, idx)
			if got := c.memory.arenaBytes(); got > memBytes {
				t.Fatalf("arena is %d bytes, bound %d", got, memBytes)
			}
		}
	}
	if got, want := c.memory.cachedBytes(), int64(10*testPage); got != want {
		t.Errorf("cached bytes = %d, want %d", got, want)
	}
	if got := metricValue(t, reg, "datenlord_cache_bytes", "memory"); got != 10*testPage {
		t.Errorf("datenlord_cache_bytes = %v", got)
	}
	if got := metricValue(t, reg, "datenlord_cache_evictions_total", "memory"); got != 128-10 {
		t.Errorf("evictions = %v, want %d", got, 128-10)
	}

	// A big bound maps one segment at a time, not the whole bound.
	big := newCache(t, 1<<30, b, nil)
	readPage(t, big, 1, blockLen, 0)
	if got := big.memory.arenaBytes(); got > defaultSegmentBytes {
		t.Errorf("1 GiB cache mapped %d bytes for one page, want at most one %d-byte segment", got, defaultSegmentBytes)
	}
}

func TestLRUEvictionOrder(t *testing.T) {
	b := newBackend(t)
	const blockLen = 8 * testPage
	putBlocks(t, b, blockLen)
	c := newCache(t, slotBytes(3), b, nil)
	tests := []struct {
		read     uint32
		resident []uint32 // pages of block 1 in memory afterwards
	}{
		{0, []uint32{0}},
		{1, []uint32{0, 1}},
		{2, []uint32{0, 1, 2}},
		{0, []uint32{0, 1, 2}}, // hit: 0 becomes most recent, 1 is now the LRU
		{3, []uint32{0, 2, 3}}, // evicts 1
		{2, []uint32{0, 2, 3}}, // hit
		{4, []uint32{2, 3, 4}}, // evicts 0
		{5, []uint32{2, 4, 5}}, // evicts 3
	}
	for step, tt := range tests {
		readPage(t, c, 1, blockLen, tt.read)
		var resident []uint32
		for idx := uint32(0); idx < 8; idx++ {
			c.memory.mu.Lock()
			_, ok := c.memory.index[PageKey{1, idx}]
			c.memory.mu.Unlock()
			if ok {
				resident = append(resident, idx)
			}
		}
		if fmt.Sprint(resident) != fmt.Sprint(tt.resident) {
			t.Fatalf("step %d (read %d): resident %v, want %v", step, tt.read, resident, tt.resident)
		}
	}
}

// corruptForTest flips a page byte of key's slot, as a bit flip or a stray
// write into the arena would.
func (t *memoryTier) corruptForTest(key PageKey, at int) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.index[key]
	if !ok {
		return false
	}
	seg, _, off := t.slotLoc(s)
	seg.mem[off+slotHeaderSize+at] ^= 0x5a
	return true
}

func TestChecksumCorruption(t *testing.T) {
	for _, at := range []int{0, 1000, testPage - 1} {
		t.Run(fmt.Sprint("byte ", at), func(t *testing.T) {
			b := newBackend(t)
			putBlocks(t, b, 2*testPage)
			reg := prometheus.NewRegistry()
			c := newCache(t, slotBytes(4), b, reg)
			readPage(t, c, 1, 2*testPage, 1)
			if !c.memory.corruptForTest(PageKey{1, 1}, at) {
				t.Fatal("page not cached")
			}
			readPage(t, c, 1, 2*testPage, 1) // detects, refetches, right bytes
			readPage(t, c, 1, 2*testPage, 1) // the refetched copy is good
			if got := b.reads.Load(); got != 2 {
				t.Errorf("backend reads = %d, want 2", got)
			}
			if got := metricValue(t, reg, "datenlord_cache_checksum_failures_total", "memory"); got != 1 {
				t.Errorf("checksum failures = %v, want 1", got)
			}
			if got := metricValue(t, reg, "datenlord_cache_hits_total", "memory"); got != 1 {
				t.Errorf("hits = %v, want 1", got)
			}
		})
	}
}

func TestSingleFlight(t *testing.T) {
	for _, readers := range []int{2, 16, 64} {
		t.Run(fmt.Sprint(readers, " readers"), func(t *testing.T) {
			b := newBackend(t)
			putBlocks(t, b, testPage)
			b.gate = make(chan struct{})
			c := newCache(t, slotBytes(4), b, nil)
			var wg sync.WaitGroup
			for range readers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					readPage(t, c, 1, testPage, 0)
				}()
			}
			// Hold the backend until every reader has joined the flight.
			deadline := time.Now().Add(10 * time.Second)
			for {
				c.flightMu.Lock()
				f := c.flights[PageKey{1, 0}]
				joined := f != nil && int(f.refs.Load()) == readers
				c.flightMu.Unlock()
				if joined {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("readers did not join one flight")
				}
				time.Sleep(time.Millisecond)
			}
			close(b.gate)
			wg.Wait()
			if got := b.reads.Load(); got != 1 {
				t.Fatalf("backend reads = %d, want 1", got)
			}
		})
	}
}

func TestSingleFlightLeaderCancelled(t *testing.T) {
	b := newBackend(t)
	putBlocks(t, b, testPage)
	b.gate = make(chan struct{})
	c := newCache(t, slotBytes(4), b, nil)
	// The leader's context is already cancelled when the store sees it; a
	// follower with a live context must still get the page.
	leaderCtx, cancel := context.WithCancel(context.Background())
	leaderErr := make(chan error, 1)
	go func() {
		_, err := c.ReadPage(leaderCtx, PageKey{1, 0}, testPage, make([]byte, testPage), AccessRandom)
		leaderErr <- err
	}()
	for b.reads.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	done := make(chan struct{})
	go func() { defer close(done); readPage(t, c, 1, testPage, 0) }()
	for {
		c.flightMu.Lock()
		f := c.flights[PageKey{1, 0}]
		joined := f != nil && f.refs.Load() == 2
		c.flightMu.Unlock()
		if joined {
			break
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	close(b.gate)
	if err := <-leaderErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("leader error = %v, want context.Canceled", err)
	}
	<-done
}

func TestPutBlockAndDropBlock(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	reg := prometheus.NewRegistry()
	c := newCache(t, slotBytes(16), b, reg)
	lengths := map[uint64]int{1: 3*testPage + 100, 2: 2 * testPage, 3: 10}
	for id, n := range lengths {
		data := blockData(id, n)
		if err := b.Put(ctx, id, data); err != nil {
			t.Fatal(err)
		}
		c.PutBlock(ctx, id, data, AccessSequential)
	}
	for id, n := range lengths {
		for idx := uint32(0); int(idx)*testPage < n; idx++ {
			readPage(t, c, id, n, idx)
		}
	}
	if got := b.reads.Load(); got != 0 {
		t.Fatalf("backend reads after PutBlock = %d, want 0", got)
	}
	wantBytes := int64(3*testPage + 100 + 2*testPage + 10)
	if got := c.memory.cachedBytes(); got != wantBytes {
		t.Fatalf("cached bytes = %d, want %d", got, wantBytes)
	}

	c.DropBlock(ctx, 1)
	c.DropBlock(ctx, 42) // unknown block: no-op
	if got := c.memory.cachedBytes(); got != wantBytes-(3*testPage+100) {
		t.Fatalf("cached bytes after DropBlock = %d", got)
	}
	c.memory.mu.Lock()
	_, chained := c.memory.chains.head[1]
	free := len(c.memory.free)
	c.memory.mu.Unlock()
	if chained || free != 16-3 {
		t.Fatalf("after DropBlock: block chain kept = %v, free slots = %d, want 13", chained, free)
	}
	readPage(t, c, 1, lengths[1], 3) // refetched
	readPage(t, c, 2, lengths[2], 1) // still cached
	if got := b.reads.Load(); got != 1 {
		t.Fatalf("backend reads = %d, want 1", got)
	}
}

func TestConcurrentReadersWithEviction(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	const blocks, blockLen = 8, 16*testPage + 123
	lens := make([]int, blocks)
	for i := range lens {
		lens[i] = blockLen
	}
	putBlocks(t, b, lens...)
	c := newCache(t, slotBytes(24), b, nil)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for i := range 400 {
				block := uint64(r.IntN(blocks) + 1)
				idx := uint32(r.IntN(17))
				switch {
				case g == 0 && i%50 == 0:
					c.DropBlock(ctx, block)
				case g == 1 && i%60 == 0:
					c.PutBlock(ctx, block, blockData(block, blockLen), AccessSequential)
				default:
					readPage(t, c, block, blockLen, idx)
				}
			}
		}()
	}
	wg.Wait()
	if got := c.memory.arenaBytes(); got > slotBytes(24) {
		t.Fatalf("arena %d bytes over bound", got)
	}
}

func TestNewConfig(t *testing.T) {
	b := newBackend(t)
	tests := []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"default", Config{PageSize: 64 << 10, MemBytes: 1 << 20}, true},
		{"zero memory", Config{PageSize: 4096}, true},
		{"page not multiple of 4096", Config{PageSize: 1000, MemBytes: 1 << 20}, false},
		{"zero page", Config{MemBytes: 1 << 20}, false},
		{"negative memory", Config{PageSize: 4096, MemBytes: -1}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := New(tt.cfg, b)
			if (err == nil) != tt.ok {
				t.Fatalf("New = %v, want ok=%v", err, tt.ok)
			}
			if c != nil {
				_ = c.Close()
			}
		})
	}
	if _, err := New(Config{PageSize: 4096}, nil); err == nil {
		t.Fatal("nil backend accepted")
	}
	// Two caches on one registry share the collectors.
	reg := prometheus.NewRegistry()
	for range 2 {
		c, err := New(Config{PageSize: 4096, MemBytes: 1 << 20, Registerer: reg}, b)
		if err != nil {
			t.Fatal(err)
		}
		_ = c.Close()
	}
}

// extraTier is a minimal second tier, to test chaining and promotion.
type extraTier struct {
	mu    sync.Mutex
	pages map[PageKey][]byte
}

func (e *extraTier) Name() string { return "disk" }
func (e *extraTier) Get(_ context.Context, k PageKey, dst []byte) (int, bool, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.pages[k]
	return copy(dst, p), ok, nil
}
func (e *extraTier) Put(_ context.Context, k PageKey, d []byte, _ Access) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.pages[k] = bytes.Clone(d)
	return nil
}
func (e *extraTier) DropBlock(_ context.Context, block uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for k := range e.pages {
		if k.Block == block {
			delete(e.pages, k)
		}
	}
}
func (e *extraTier) Close() error { return nil }

func TestExtraTierPromotion(t *testing.T) {
	b := newBackend(t)
	putBlocks(t, b, 4*testPage)
	reg := prometheus.NewRegistry()
	disk := &extraTier{pages: map[PageKey][]byte{}}
	c, err := New(Config{PageSize: testPage, MemBytes: slotBytes(1), Registerer: reg}, b, disk)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	readPage(t, c, 1, 4*testPage, 0) // backend; offered to memory and disk
	readPage(t, c, 1, 4*testPage, 1) // backend; evicts page 0 from memory
	readPage(t, c, 1, 4*testPage, 0) // disk hit, promoted to memory
	readPage(t, c, 1, 4*testPage, 0) // memory hit
	if got := b.reads.Load(); got != 2 {
		t.Fatalf("backend reads = %d, want 2", got)
	}
	if got := metricValue(t, reg, "datenlord_cache_hits_total", "disk"); got != 1 {
		t.Errorf("disk hits = %v, want 1", got)
	}
	if got := metricValue(t, reg, "datenlord_cache_hits_total", "memory"); got != 1 {
		t.Errorf("memory hits = %v, want 1", got)
	}
	c.DropBlock(context.Background(), 1)
	if len(disk.pages) != 0 {
		t.Errorf("DropBlock left %d pages in the extra tier", len(disk.pages))
	}
}

func TestLRUPolicy(t *testing.T) {
	l := NewLRU()
	l.Grow(4)
	if _, ok := l.Victim(); ok {
		t.Fatal("empty LRU has a victim")
	}
	ops := []struct {
		op   string
		slot int32
		want int32 // victim afterwards, noSlot for none
	}{
		{"insert", 0, 0}, {"insert", 1, 0}, {"insert", 2, 0},
		{"touch", 0, 1}, {"remove", 1, 2}, {"touch", 2, 0},
		{"remove", 0, 2}, {"remove", 2, noSlot}, {"touch", 3, noSlot},
	}
	for i, o := range ops {
		switch o.op {
		case "insert":
			l.Insert(o.slot, AccessRandom)
		case "touch":
			l.Touch(o.slot, AccessRandom)
		case "remove":
			l.Remove(o.slot)
		}
		v, ok := l.Victim()
		if !ok {
			v = noSlot
		}
		if v != o.want {
			t.Fatalf("op %d (%s %d): victim %d, want %d", i, o.op, o.slot, v, o.want)
		}
	}
}

func TestMemoryHitAllocatesNothing(t *testing.T) {
	b := newBackend(t)
	putBlocks(t, b, testPage)
	c := newCache(t, slotBytes(4), b, prometheus.NewRegistry())
	readPage(t, c, 1, testPage, 0)
	dst := make([]byte, testPage)
	ctx := context.Background()
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := c.ReadPage(ctx, PageKey{1, 0}, testPage, dst, AccessRandom); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("memory hit allocates %v times", allocs)
	}
}
