package cache_test

import (
	"context"
	"errors"
	"math"
	"sync"
	"testing"

	"github.com/datenlord/datenlord-go/cache"
)

// Op codes of the neighbor wire (cache/neighbor_wire.go).
const (
	testOpPutPage uint16 = 0x0202
	testOpLocate  uint16 = 0x0203
)

// callCounter passes calls to a real transport, counts them per op and
// fails the ops in fail (a dead or slow peer, as the caller sees it).
type callCounter struct {
	cache.NeighborTransport
	mu    sync.Mutex
	calls map[uint16]int
	fail  map[uint16]bool
}

func (c *callCounter) CallInto(ctx context.Context, addr string, op uint16, req, resp []byte) ([]byte, error) {
	c.mu.Lock()
	c.calls[op]++
	fail := c.fail[op]
	c.mu.Unlock()
	if fail {
		return nil, errors.New("injected failure")
	}
	return c.NeighborTransport.CallInto(ctx, addr, op, req, resp)
}

func (c *callCounter) count(op uint16) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[op]
}

func (c *callCounter) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls = make(map[uint16]int)
}

// countingCluster is newNBCluster whose nodes' calls are counted (and the
// ops in fail fail).
func countingCluster(t *testing.T, n int, fail ...uint16) (*nbCluster, map[string]*callCounter) {
	t.Helper()
	counters := make(map[string]*callCounter)
	failing := make(map[uint16]bool)
	for _, op := range fail {
		failing[op] = true
	}
	cl := newNBCluster(t, n, nbOptions{wrap: func(id string, tr cache.NeighborTransport) cache.NeighborTransport {
		c := &callCounter{NeighborTransport: tr, calls: make(map[uint16]int), fail: failing}
		counters[id] = c
		return c
	}})
	return cl, counters
}

// coordinatorOf returns the node that coordinates block (the HRW owner
// of the block's key).
func coordinatorOf(cl *nbCluster, block uint64) string {
	o, _ := cache.OwnerOf(cl.member, cache.PageKey{Block: block, Index: math.MaxUint32})
	return o.ID
}

// pageOwners counts, per node id, the pages of block it owns.
func pageOwners(cl *nbCluster, block uint64, size int) map[string]int {
	out := make(map[string]int)
	for idx := 0; idx*nbPage < size; idx++ {
		o, _ := cache.OwnerOf(cl.member, cache.PageKey{Block: block, Index: uint32(idx)})
		out[o.ID]++
	}
	return out
}

// writeThroughFirst writes nblocks blocks from first to the store and
// through node 1's cache, waits until node 1 has offered every page other
// nodes own, and then zeroes the call counters.
func writeThroughFirst(t *testing.T, cl *nbCluster, counters map[string]*callCounter, first, nblocks, seed uint64) map[uint64][]byte {
	t.Helper()
	blocks := cl.writeFile(t, first, int(nblocks), seed)
	n1 := cl.nodes[0]
	for id := first; id < first+nblocks; id++ {
		n1.c.PutBlock(context.Background(), id, blocks[id], cache.AccessRandom)
	}
	waitOffers(t, n1, float64(remotePages(cl, n1.id, blocks)))
	for _, c := range counters {
		c.reset()
	}
	return blocks
}

// readCostsNoGet reads blocks from first through node's cache and fails
// t if that cost a store GET.
func readCostsNoGet(t *testing.T, cl *nbCluster, node *nbNode, blocks map[uint64][]byte, first uint64) {
	t.Helper()
	before := cl.gets()
	readAll(t, node.c, blocks, first, cache.AccessSequential)
	if g := cl.gets() - before; g != 0 {
		t.Errorf("read after the warm-up cost %v store GETs", g)
	}
}

// TestNeighborWarmAfterWrite: warming up blocks just written through
// node 1 (so their pages sit with their owners) reads nothing from the
// store, reports no block fetched and sends no page; each coordinator
// asks each remote owner once per block. A read afterwards costs no GET.
func TestNeighborWarmAfterWrite(t *testing.T) {
	cl, counters := countingCluster(t, 3)
	const first, nblocks = 800, 8
	blocks := writeThroughFirst(t, cl, counters, first, nblocks, 8)
	n2, n3 := cl.nodes[1], cl.nodes[2]
	before := cl.gets()
	wantLocates := 0
	for id := uint64(first); id < first+nblocks; id++ {
		pages, fetched, err := n2.nb.WarmBlock(context.Background(), id, len(blocks[id]))
		if err != nil {
			t.Fatal(err)
		}
		if want := (len(blocks[id]) + nbPage - 1) / nbPage; pages != want {
			t.Errorf("block %d: %d pages warmed, want %d", id, pages, want)
		}
		if fetched {
			t.Errorf("block %d: fetched from the store although its owners hold every page", id)
		}
		coord := coordinatorOf(cl, id)
		for owner := range pageOwners(cl, id, len(blocks[id])) {
			if owner != coord {
				wantLocates++
			}
		}
	}
	if g := cl.gets() - before; g != 0 {
		t.Errorf("warm-up after the write cost %v store GETs, want 0", g)
	}
	puts, locates := 0, 0
	for _, c := range counters {
		puts += c.count(testOpPutPage)
		locates += c.count(testOpLocate)
	}
	if puts != 0 {
		t.Errorf("warm-up after the write sent %d pages, want 0", puts)
	}
	if locates != wantLocates {
		t.Errorf("warm-up made %d locate calls, want %d (one per remote owner per block)", locates, wantLocates)
	}
	readCostsNoGet(t, cl, n3, blocks, first)
}

// TestNeighborWarmLocateFails: when no owner can be asked (every locate
// call fails) the warm-up does what it did before the locate: one GET per
// block that has a remote page, every such page sent to its owner, and
// the warm-up succeeds; a read afterwards costs no GET.
func TestNeighborWarmLocateFails(t *testing.T) {
	cl, counters := countingCluster(t, 3, testOpLocate)
	const first, nblocks = 900, 8
	blocks := writeThroughFirst(t, cl, counters, first, nblocks, 9)
	n1, n3 := cl.nodes[0], cl.nodes[2]
	before := cl.gets()
	wantGets, wantPuts := 0, 0
	for id := uint64(first); id < first+nblocks; id++ {
		_, fetched, err := n1.nb.WarmBlock(context.Background(), id, len(blocks[id]))
		if err != nil {
			t.Fatalf("block %d: a failed locate failed the warm-up: %v", id, err)
		}
		coord := coordinatorOf(cl, id)
		remote := 0
		for owner, n := range pageOwners(cl, id, len(blocks[id])) {
			if owner != coord {
				remote += n
			}
		}
		if remote > 0 {
			// PutBlock in a cluster keeps only node 1's own pages there:
			// no coordinator holds the whole block in memory.
			wantPuts += remote
			wantGets++
			if !fetched {
				t.Errorf("block %d: not fetched although no owner could be asked", id)
			}
		}
	}
	if g := cl.gets() - before; g != float64(wantGets) {
		t.Errorf("warm-up with failing locates cost %v store GETs, want %d", g, wantGets)
	}
	puts := 0
	for _, c := range counters {
		puts += c.count(testOpPutPage)
	}
	if puts != wantPuts {
		t.Errorf("warm-up with failing locates sent %d pages, want %d", puts, wantPuts)
	}
	readCostsNoGet(t, cl, n3, blocks, first)
}
