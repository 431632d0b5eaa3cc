package cache

import (
	"bytes"
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// TestPinPrefetched checks the zero-copy path of a sequential reader: the
// bytes lent from a prefetch are the block's, a block stays lent until
// every page was consumed, a released block is still served (from
// memory) without another backend read, and every page a pin overlaps is
// counted once, as a hit of tier "prefetch" and nowhere else.
func TestPinPrefetched(t *testing.T) {
	const blockLen = 8*testPage + 100 // a short last page
	type pin struct{ off, n int }
	cases := []struct {
		name string
		pins []pin
		// releasedAfter tells whether the prefetch is released once the
		// pins were made (every page consumed).
		releasedAfter bool
		// wantHits is the prefetch hits the pins count: the pages each
		// overlaps (pages 1 and 6 of "unaligned pieces" twice).
		wantHits float64
	}{
		{"whole block", []pin{{0, blockLen}}, true, 9},
		{"page by page", []pin{{0, testPage}, {testPage, 3 * testPage}, {4 * testPage, blockLen - 4*testPage}}, true, 9},
		{"unaligned pieces", []pin{{0, 5000}, {5000, 20000}, {25000, blockLen - 25000}}, true, 2 + 6 + 3},
		{"first half only", []pin{{0, 4 * testPage}}, false, 4},
		{"end only", []pin{{blockLen - 10, 10}}, false, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			b := newBackend(t)
			putBlocks(t, b, blockLen)
			want := blockData(1, blockLen)
			reg := prometheus.NewRegistry()
			c := newCache(t, 1<<20, b, reg)
			ctx := context.Background()
			if err := c.Prefetch(ctx, 1, blockLen, 0, AccessSequential); err != nil {
				t.Fatal(err)
			}
			for _, p := range tc.pins {
				data, unpin, ok, err := c.PinPrefetched(ctx, 1, p.off, p.n)
				if err != nil || !ok {
					t.Fatalf("pin [%d, %d): ok %v, err %v", p.off, p.off+p.n, ok, err)
				}
				if !bytes.Equal(data, want[p.off:p.off+p.n]) {
					t.Fatalf("pin [%d, %d): bytes differ", p.off, p.off+p.n)
				}
				unpin()
			}
			if got := metricValue(t, reg, "datenlord_cache_hits_total", prefetchTier); got != tc.wantHits {
				t.Errorf("prefetch hits after the pins: %v, want %v", got, tc.wantHits)
			}
			for _, name := range []string{"datenlord_cache_hits_total", "datenlord_cache_misses_total"} {
				if got := metricValue(t, reg, name, "memory"); got != 0 {
					t.Errorf("%s{tier=memory} after the pins: %v, want 0 (lent reads are prefetch hits only)", name, got)
				}
			}
			if got := metricValue(t, reg, "datenlord_cache_misses_total", prefetchTier); got != 0 {
				t.Errorf("prefetch misses: %v, want 0 (a prefetch counts only hits)", got)
			}
			hits := tc.wantHits
			_, unpin, ok, err := c.PinPrefetched(ctx, 1, 0, 1)
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				unpin()
				hits++
			}
			if ok == tc.releasedAfter {
				t.Errorf("prefetch still lent after the pins: %v, want %v", ok, !tc.releasedAfter)
			}
			// Every page is in memory whatever was consumed: reading the
			// block costs no further backend read.
			dst := make([]byte, testPage)
			for idx := uint32(0); idx*testPage < blockLen; idx++ {
				n, err := c.ReadPage(ctx, PageKey{Block: 1, Index: idx}, pageLen(blockLen, idx), dst, AccessSequential)
				if err != nil {
					t.Fatal(err)
				}
				if off := int(idx) * testPage; !bytes.Equal(dst[:n], want[off:off+n]) {
					t.Fatalf("page %d differs", idx)
				}
			}
			if got := b.reads.Load(); got != 1 {
				t.Errorf("%d backend reads, want 1 (the prefetch)", got)
			}
			if got := metricValue(t, reg, "datenlord_cache_hits_total", prefetchTier); got != hits {
				t.Errorf("prefetch hits after reading through the tiers: %v, want %v (unchanged)", got, hits)
			}
			if got := metricValue(t, reg, "datenlord_cache_hits_total", "memory"); got != 9 {
				t.Errorf("memory hits: %v, want 9 (one per ReadPage)", got)
			}
		})
	}
}

// TestPinPrefetchedBound checks that prefetches nobody consumes are let go
// past prefetchRetainBytes (oldest first) and that a buffer pinned when
// its prefetch is let go keeps its bytes until unpinned.
func TestPinPrefetchedBound(t *testing.T) {
	const blockLen = 1 << 20
	blocks := prefetchRetainBytes/blockLen + 4
	lengths := make([]int, blocks)
	for i := range lengths {
		lengths[i] = blockLen
	}
	b := newBackend(t)
	putBlocks(t, b, lengths...)
	c := newCache(t, 1<<20, b, nil) // memory far smaller than the data
	ctx := context.Background()
	if err := c.Prefetch(ctx, 1, blockLen, 0, AccessSequential); err != nil {
		t.Fatal(err)
	}
	held, unpin, ok, err := c.PinPrefetched(ctx, 1, 0, blockLen)
	if err != nil || !ok {
		t.Fatalf("pin block 1: ok %v, err %v", ok, err)
	}
	for id := uint64(2); id <= uint64(blocks); id++ {
		if err := c.Prefetch(ctx, id, blockLen, 0, AccessSequential); err != nil {
			t.Fatal(err)
		}
	}
	for id := uint64(1); id <= uint64(blocks); id++ {
		_, u, ok, err := c.PinPrefetched(ctx, id, 0, 1)
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			u()
		}
		if wantOK := id > uint64(blocks)-prefetchRetainBytes/blockLen; ok != wantOK {
			t.Errorf("block %d lent: %v, want %v", id, ok, wantOK)
		}
	}
	if !bytes.Equal(held, blockData(1, blockLen)) {
		t.Error("a pinned buffer changed after its prefetch was let go")
	}
	unpin()
	c.pf.mu.Lock()
	retained := c.pf.retainedBytes
	c.pf.mu.Unlock()
	if retained > prefetchRetainBytes {
		t.Errorf("%d bytes retained, bound %d", retained, prefetchRetainBytes)
	}
}

// TestDropBlockReleasesPrefetch: a dropped block's retained prefetch is
// released at once (no reader is lent its buffer afterwards), and a
// reader that pinned it before keeps valid bytes.
func TestDropBlockReleasesPrefetch(t *testing.T) {
	const blockLen = 256 << 10
	b := newBackend(t)
	putBlocks(t, b, blockLen)
	c := newCache(t, 4<<20, b, nil)
	ctx := context.Background()
	if err := c.Prefetch(ctx, 1, blockLen, 0, AccessSequential); err != nil {
		t.Fatal(err)
	}
	held, unpin, ok, err := c.PinPrefetched(ctx, 1, 0, 4096)
	if err != nil || !ok {
		t.Fatalf("pin: ok %v, err %v", ok, err)
	}
	c.DropBlock(ctx, 1)
	if _, _, ok, err := c.PinPrefetched(ctx, 1, 4096, 4096); ok || err != nil {
		t.Errorf("after DropBlock the prefetch still lends its buffer (ok %v, err %v)", ok, err)
	}
	c.pf.mu.Lock()
	retained := c.pf.retainedBytes
	c.pf.mu.Unlock()
	if retained != 0 {
		t.Errorf("%d bytes still retained after DropBlock", retained)
	}
	if !bytes.Equal(held, blockData(1, blockLen)[:4096]) {
		t.Error("a pinned buffer changed after DropBlock")
	}
	unpin()
}
