package cache_test

import (
	"bytes"
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/tcpfallback"
)

// TestReadOnlyNeighbor: a read-only tier (a client outside the
// membership, as `bench tiers --addr` is) reads every page from the
// members over real sockets, owns none, offers none and cannot serve.
func TestReadOnlyNeighbor(t *testing.T) {
	// One member: a reader that took part in the hashing would own
	// about half the pages and find no other node to read them from.
	cl := newNBCluster(t, 1, nbOptions{})
	blocks := cl.writeFile(t, 1, 3, 7)
	// Load every page into n1's memory.
	readAll(t, cl.nodes[0].c, blocks, 1, cache.AccessSequential)
	gets := cl.gets()

	ctx := context.Background()
	tr, err := tcpfallback.New(ctx, tcpfallback.Config{NodeID: "reader", Secret: nbSecret, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	nb, err := cache.NewNeighborTier(cache.NeighborConfig{Self: "reader", ReadOnly: true, Membership: cl.member, Transport: tr,
		PageSize: nbPage, BlockSize: nbBlock, CallTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Close()
	if !nb.Contains(cache.PageKey{Block: 1}) {
		t.Error("a read-only tier with live members does not claim pages")
	}
	dst := make([]byte, nbPage)
	pages := 0
	for id, b := range blocks {
		for idx := 0; idx*nbPage < len(b); idx++ {
			want := b[idx*nbPage : min(len(b), (idx+1)*nbPage)]
			got, ok, err := nb.GetSized(ctx, cache.PageKey{Block: id, Index: uint32(idx)}, len(want), dst, cache.AccessRandom)
			if err != nil || !ok || got != len(want) || !bytes.Equal(dst[:got], want) {
				t.Fatalf("page %d/%d: ok %v, %d bytes, err %v, equal %v", id, idx, ok, got, err, bytes.Equal(dst[:got], want))
			}
			pages++
		}
	}
	if g := cl.gets() - gets; g != 0 {
		t.Errorf("reading %d cached pages cost %v store GETs", pages, g)
	}
	if err := nb.Put(ctx, cache.PageKey{Block: 9}, dst, cache.AccessRandom); err != nil {
		t.Errorf("Put: %v", err)
	}
	c, err := cache.New(cache.Config{PageSize: nbPage, MemBytes: 4 << 20}, cl.st)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := nb.Serve(c); err == nil {
		t.Error("a read-only tier agreed to serve")
	}
}

// TestMemoryPages lists the full pages held in memory, bounded by max.
func TestMemoryPages(t *testing.T) {
	cl := newNBCluster(t, 1, nbOptions{})
	blocks := cl.writeFile(t, 1, 2, 3) // block 2 is short: its last page is partial
	readAll(t, cl.nodes[0].c, blocks, 1, cache.AccessRandom)
	c := cl.nodes[0].c
	all := c.MemoryPages(1 << 20)
	full := 0
	for _, b := range blocks {
		full += len(b) / nbPage
	}
	if len(all) != full {
		t.Errorf("MemoryPages listed %d pages, want the %d full ones", len(all), full)
	}
	for _, k := range all {
		if b := blocks[k.Block]; b == nil || (int(k.Index)+1)*nbPage > len(b) {
			t.Errorf("listed %v, not a full page of the file", k)
		}
	}
	if got := c.MemoryPages(3); len(got) != 3 {
		t.Errorf("MemoryPages(3) listed %d", len(got))
	}
	if got := c.MemoryPages(0); len(got) != 0 {
		t.Errorf("MemoryPages(0) listed %d", len(got))
	}
}

// TestPutBlockInClusterKeepsOwnedPages: a written block's pages stay in
// the writer's memory only where the writer owns them; every other page
// reaches its owner (the write path waits for offer queue room rather
// than dropping), so reading the block anywhere costs no store GET.
func TestPutBlockInClusterKeepsOwnedPages(t *testing.T) {
	cl := newNBCluster(t, 2, nbOptions{offerQueue: 2})
	ctx := context.Background()
	const nblocks = 16
	blocks := map[uint64][]byte{}
	for b := uint64(1); b <= nblocks; b++ {
		data := make([]byte, nbBlock)
		for i := range data {
			data[i] = byte(i*7 + int(b))
		}
		blocks[b] = data
		if err := cl.st.Put(ctx, b, data); err != nil {
			t.Fatal(err)
		}
		cl.nodes[0].c.PutBlock(ctx, b, data, cache.AccessRandom)
	}
	if d := metric(cl.nodes[0].reg, "datenlord_neighbor_offers_total", map[string]string{"result": "dropped"}); d != 0 {
		t.Errorf("the writer dropped %v offers", d)
	}
	held := map[cache.PageKey]bool{}
	for _, k := range cl.nodes[0].c.MemoryPages(1 << 20) {
		held[k] = true
	}
	owned := 0
	for b := range blocks {
		for idx := range uint32(nbBlock / nbPage) {
			k := cache.PageKey{Block: b, Index: idx}
			own := cl.nodes[0].nb.OwnedHere(k)
			if own {
				owned++
			}
			if held[k] != own {
				t.Fatalf("page %v: in the writer's memory %v, owned by the writer %v", k, held[k], own)
			}
		}
	}
	if owned == 0 || owned == nblocks*nbBlock/nbPage {
		t.Fatalf("the writer owns %d of %d pages: the hashing did not spread them", owned, nblocks*nbBlock/nbPage)
	}
	// Offers are sent asynchronously: wait until n2 has its pages.
	deadline := time.Now().Add(10 * time.Second)
	for len(cl.nodes[1].c.MemoryPages(1<<20)) < nblocks*nbBlock/nbPage-owned && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	gets := cl.gets()
	for _, nd := range cl.nodes {
		readAll(t, nd.c, blocks, 1, cache.AccessRandom)
	}
	if g := cl.gets() - gets; g != 0 {
		t.Errorf("reading the written blocks on both nodes cost %v store GETs", g)
	}
}
