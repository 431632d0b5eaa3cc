package cache

import (
	"bytes"
	"context"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestPinPageHitMissAndChecks(t *testing.T) {
	b := newBackend(t)
	putBlocks(t, b, 2*testPage-100)
	reg := prometheus.NewRegistry()
	c := newCache(t, slotBytes(4), b, reg)
	ctx := context.Background()
	if _, ok := c.PinPage(ctx, PageKey{1, 0}, testPage); ok {
		t.Fatal("pinned a page that is not cached")
	}
	readPage(t, c, 1, 2*testPage-100, 1)
	if _, ok := c.PinPage(ctx, PageKey{1, 1}, testPage); ok {
		t.Fatal("pinned a page with the wrong length")
	}
	for _, bad := range []int{0, -1, testPage + 1} {
		if _, ok := c.PinPage(ctx, PageKey{1, 1}, bad); ok {
			t.Fatalf("pinned with length %d", bad)
		}
	}
	p, ok := c.PinPage(ctx, PageKey{1, 1}, testPage-100)
	if !ok {
		t.Fatal("cached page not pinned")
	}
	if want := blockData(1, 2*testPage-100)[testPage:]; !bytes.Equal(p.Bytes(), want) {
		t.Fatal("pinned page has the wrong bytes")
	}
	p.Release()
	p.Release() // idempotent
	if p.Bytes() != nil {
		t.Fatal("released page still has bytes")
	}
	if got := metricValue(t, reg, "datenlord_cache_hits_total", "memory"); got != 1 {
		t.Errorf("hits = %v, want 1 (the pin)", got)
	}

	// A corrupted slot is not pinned but dropped, like a copying read.
	if !c.memory.corruptForTest(PageKey{1, 1}, 7) {
		t.Fatal("page not cached")
	}
	if _, ok := c.PinPage(ctx, PageKey{1, 1}, testPage-100); ok {
		t.Fatal("pinned a corrupt page")
	}
	if got := metricValue(t, reg, "datenlord_cache_checksum_failures_total", "memory"); got != 1 {
		t.Errorf("checksum failures = %v, want 1", got)
	}
	if _, ok := c.PinPage(ctx, PageKey{1, 1}, testPage-100); ok {
		t.Fatal("corrupt page still cached")
	}
}

// TestPinnedPageSurvivesEvictionAndDrop pins pages and then evicts and
// drops everything: a pinned slot must keep its bytes until Release, and be
// reused afterwards.
func TestPinnedPageSurvivesEvictionAndDrop(t *testing.T) {
	const blocks = 16
	b := newBackend(t)
	lens := make([]int, blocks)
	for i := range lens {
		lens[i] = testPage
	}
	putBlocks(t, b, lens...)
	c := newCache(t, slotBytes(4), b, nil)
	ctx := context.Background()
	readPage(t, c, 1, testPage, 0)
	readPage(t, c, 2, testPage, 0)
	p1, ok1 := c.PinPage(ctx, PageKey{1, 0}, testPage)
	p2, ok2 := c.PinPage(ctx, PageKey{2, 0}, testPage)
	if !ok1 || !ok2 {
		t.Fatal("pages not pinned")
	}
	c.DropBlock(ctx, 2) // dropped while pinned: a zombie until released
	for round := 0; round < 3; round++ {
		for id := uint64(3); id <= blocks; id++ {
			readPage(t, c, id, testPage, 0) // evicts everything it can
		}
	}
	if !bytes.Equal(p1.Bytes(), blockData(1, testPage)) || !bytes.Equal(p2.Bytes(), blockData(2, testPage)) {
		t.Fatal("a pinned page was overwritten")
	}
	p1.Release()
	p2.Release()
	for id := uint64(1); id <= blocks; id++ {
		readPage(t, c, id, testPage, 0) // the unpinned slots are reused
	}
	if got := c.memory.cachedBytes(); got != 4*testPage {
		t.Fatalf("cached bytes = %d, want the 4 slots full", got)
	}
}

// TestPinConcurrentEviction pins and checks pages while other goroutines
// churn a cache far smaller than the data.
func TestPinConcurrentEviction(t *testing.T) {
	const blocks = 32
	b := newBackend(t)
	lens := make([]int, blocks)
	for i := range lens {
		lens[i] = 2 * testPage
	}
	putBlocks(t, b, lens...)
	c := newCache(t, slotBytes(6), b, nil)
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			dst := make([]byte, testPage)
			for i := range 400 {
				id := uint64((i*7+g*5)%blocks + 1)
				idx := uint32(i % 2)
				key := PageKey{id, idx}
				want := blockData(id, 2*testPage)[int(idx)*testPage:][:testPage]
				if p, ok := c.PinPage(ctx, key, testPage); ok {
					if !bytes.Equal(p.Bytes(), want) {
						t.Errorf("pinned %v: wrong bytes", key)
					}
					// Let the others evict while it is pinned.
					for j := 0; j < 3; j++ {
						other := PageKey{uint64((i+j+g)%blocks + 1), uint32(j % 2)}
						if _, err := c.ReadPage(ctx, other, testPage, dst, AccessRandom); err != nil {
							t.Error(err)
						}
					}
					if !bytes.Equal(p.Bytes(), want) {
						t.Errorf("pinned %v: overwritten while pinned", key)
					}
					p.Release()
					continue
				}
				if _, err := c.ReadPage(ctx, key, testPage, dst, AccessRandom); err != nil {
					t.Error(err)
				} else if !bytes.Equal(dst, want) {
					t.Errorf("read %v: wrong bytes", key)
				}
			}
		})
	}
	wg.Wait()
}

func TestPinPageAllocatesNothing(t *testing.T) {
	b := newBackend(t)
	putBlocks(t, b, testPage)
	c := newCache(t, slotBytes(4), b, prometheus.NewRegistry())
	readPage(t, c, 1, testPage, 0)
	ctx := context.Background()
	allocs := testing.AllocsPerRun(100, func() {
		p, ok := c.PinPage(ctx, PageKey{1, 0}, testPage)
		if !ok {
			t.Fatal("not pinned")
		}
		p.Release()
	})
	if allocs != 0 {
		t.Fatalf("pin allocates %v times", allocs)
	}
}
