package cache_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/store"
	"github.com/datenlord/datenlord-go/tcpfallback"
)

const (
	nbPage  = 64 << 10
	nbBlock = 512 << 10
)

var nbSecret = []byte("neighbor-test-secret")

// nbNode is one in-process cache node: a real tcpfallback transport on
// 127.0.0.1, a Cache with a memory tier and a neighbor tier.
type nbNode struct {
	id    string
	tr    *tcpfallback.Transport
	nb    *cache.NeighborTier
	c     *cache.Cache
	reg   *prometheus.Registry
	close func()
}

// nbCluster is n nodes over one shared file:// store whose GETs are
// counted by the store's own metrics.
type nbCluster struct {
	st     store.Store
	stReg  *prometheus.Registry
	nodes  []*nbNode
	member cache.StaticMembership
}

type nbOptions struct {
	memBytes    int64
	callTimeout time.Duration
	offerQueue  int
	// wrap, if set, wraps each node's transport as its neighbor tier
	// sees it (to count or fail calls; they still go over the socket).
	wrap func(id string, tr cache.NeighborTransport) cache.NeighborTransport
}

func newNBCluster(t *testing.T, n int, opt nbOptions) *nbCluster {
	t.Helper()
	if opt.memBytes == 0 {
		opt.memBytes = 64 << 20
	}
	ctx := context.Background()
	stReg := prometheus.NewRegistry()
	st, err := store.Open(ctx, "file://"+t.TempDir(), store.Options{Registerer: stReg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cl := &nbCluster{st: st, stReg: stReg}
	log := slog.New(slog.DiscardHandler)
	for i := range n {
		id := fmt.Sprintf("n%d", i+1)
		tr, err := tcpfallback.New(ctx, tcpfallback.Config{NodeID: id, Listen: "127.0.0.1:0", Secret: nbSecret, DialTimeout: 2 * time.Second, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		cl.nodes = append(cl.nodes, &nbNode{id: id, tr: tr})
		cl.member = append(cl.member, cache.Node{ID: id, Addr: tr.Addr()})
	}
	for _, nd := range cl.nodes {
		nd.reg = prometheus.NewRegistry()
		var tr cache.NeighborTransport = nd.tr
		if opt.wrap != nil {
			tr = opt.wrap(nd.id, tr)
		}
		nb, err := cache.NewNeighborTier(cache.NeighborConfig{
			Self: nd.id, Membership: cl.member, Transport: tr,
			PageSize: nbPage, BlockSize: nbBlock, CallTimeout: opt.callTimeout,
			OfferQueue: opt.offerQueue, Registerer: nd.reg, Logger: log,
		})
		if err != nil {
			t.Fatal(err)
		}
		c, err := cache.New(cache.Config{PageSize: nbPage, MemBytes: opt.memBytes, Registerer: nd.reg, Logger: log}, st, nb)
		if err != nil {
			t.Fatal(err)
		}
		if err := nb.Serve(c); err != nil {
			t.Fatal(err)
		}
		nd.nb, nd.c = nb, c
		nd.close = sync.OnceFunc(func() { nd.tr.Close(); c.Close() })
		t.Cleanup(nd.close)
	}
	return cl
}

func (cl *nbCluster) gets() float64 {
	return metric(cl.stReg, "datenlord_store_requests_total", map[string]string{"op": "get", "outcome": "ok"})
}

// metric sums the series of a counter or gauge whose labels match.
func metric(reg *prometheus.Registry, name string, labels map[string]string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return -1
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue series
				}
			}
			if m.Counter != nil {
				sum += m.Counter.GetValue()
			}
			if m.Gauge != nil {
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum
}

// writeFile puts nblocks random blocks (the last one short) in the store
// and returns their contents by block id.
func (cl *nbCluster) writeFile(t *testing.T, first uint64, nblocks int, seed uint64) map[uint64][]byte {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, seed))
	blocks := make(map[uint64][]byte)
	for i := range nblocks {
		size := nbBlock
		if i == nblocks-1 {
			size = nbBlock - 3*nbPage - 1000 // a short last block with a partial page
		}
		b := make([]byte, size)
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		id := first + uint64(i)
		if err := cl.st.Put(context.Background(), id, b); err != nil {
			t.Fatal(err)
		}
		blocks[id] = b
	}
	return blocks
}

// readAll reads every page of blocks through c, in block order, and
// checks the bytes; it returns the slowest page read.
func readAll(t *testing.T, c *cache.Cache, blocks map[uint64][]byte, first uint64, access cache.Access) time.Duration {
	t.Helper()
	var slowest time.Duration
	dst := make([]byte, nbPage)
	for id := first; id < first+uint64(len(blocks)); id++ {
		b := blocks[id]
		for off, idx := 0, uint32(0); off < len(b); off, idx = off+nbPage, idx+1 {
			want := b[off:min(off+nbPage, len(b))]
			start := time.Now()
			n, err := c.ReadPage(context.Background(), cache.PageKey{Block: id, Index: idx}, len(want), dst, access)
			slowest = max(slowest, time.Since(start))
			if err != nil {
				t.Fatalf("read block %d page %d: %v", id, idx, err)
			}
			if !bytes.Equal(dst[:n], want) {
				t.Fatalf("block %d page %d: wrong bytes", id, idx)
			}
		}
	}
	return slowest
}

func pagesOf(blocks map[uint64][]byte) int {
	n := 0
	for _, b := range blocks {
		n += (len(b) + nbPage - 1) / nbPage
	}
	return n
}

// waitOffers waits until node has sent or dropped want offers.
func waitOffers(t *testing.T, nd *nbNode, want float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		sent := metric(nd.reg, "datenlord_neighbor_offers_total", map[string]string{"result": "sent"})
		dropped := metric(nd.reg, "datenlord_neighbor_offers_total", map[string]string{"result": "dropped"})
		if sent+dropped >= want {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("offers of %s not done", nd.id)
}

// remotePages counts the pages of blocks that node does not own.
func remotePages(cl *nbCluster, self string, blocks map[uint64][]byte) int {
	n := 0
	for id, b := range blocks {
		for idx := 0; idx*nbPage < len(b); idx++ {
			if o, _ := cache.OwnerOf(cl.member, cache.PageKey{Block: id, Index: uint32(idx)}); o.ID != self {
				n++
			}
		}
	}
	return n
}

// TestNeighborWrittenOnOneReadOnTwo: a file written through node 1's
// PutBlock is offered to its owners; node 2 then node 3 read it all
// without a single store GET, node 3 from neighbor hits.
func TestNeighborWrittenOnOneReadOnTwo(t *testing.T) {
	cl := newNBCluster(t, 3, nbOptions{})
	const first, nblocks = 100, 16
	blocks := cl.writeFile(t, first, nblocks, 1)
	n1, n2, n3 := cl.nodes[0], cl.nodes[1], cl.nodes[2]
	for id := uint64(first); id < first+nblocks; id++ {
		n1.c.PutBlock(context.Background(), id, blocks[id], cache.AccessRandom)
	}
	waitOffers(t, n1, float64(remotePages(cl, n1.id, blocks)))
	before := cl.gets()
	readAll(t, n2.c, blocks, first, cache.AccessSequential)
	readAll(t, n3.c, blocks, first, cache.AccessSequential)
	gets := cl.gets() - before
	hits3 := metric(n3.reg, "datenlord_cache_hits_total", map[string]string{"tier": "neighbor"})
	reads3 := metric(n3.reg, "datenlord_neighbor_reads_total", map[string]string{"transport": "tcp"})
	t.Logf("store GETs for the two reads: %v (blocks %d, pages %d); node 3 neighbor hits %v, neighbor reads %v", gets, nblocks, pagesOf(blocks), hits3, reads3)
	if gets > nblocks {
		t.Errorf("%v store GETs for two full reads of %d blocks", gets, nblocks)
	}
	if want := remotePages(cl, n3.id, blocks); hits3 < float64(want) {
		t.Errorf("node 3: %v neighbor hits, want at least its %d remote pages", hits3, want)
	}
}

// TestNeighborColdSequentialOneGetPerBlock: a file only in the store is
// read sequentially on node 2, then on node 3: the cluster reads each
// block from the store once (at its coordinator), node 3 none.
func TestNeighborColdSequentialOneGetPerBlock(t *testing.T) {
	cl := newNBCluster(t, 3, nbOptions{})
	const first, nblocks = 200, 16
	blocks := cl.writeFile(t, first, nblocks, 2)
	n2, n3 := cl.nodes[1], cl.nodes[2]
	before := cl.gets()
	readAll(t, n2.c, blocks, first, cache.AccessSequential)
	mid := cl.gets()
	for _, nd := range cl.nodes {
		waitOffers(t, nd, 0)
	}
	readAll(t, n3.c, blocks, first, cache.AccessSequential)
	after := cl.gets()
	hits3 := metric(n3.reg, "datenlord_cache_hits_total", map[string]string{"tier": "neighbor"})
	t.Logf("store GETs: node 2 read %v, node 3 read %v (blocks %d, pages %d); node 3 neighbor hits %v", mid-before, after-mid, nblocks, pagesOf(blocks), hits3)
	if mid-before > nblocks {
		t.Errorf("node 2's read cost %v store GETs for %d blocks", mid-before, nblocks)
	}
	if after-mid != 0 {
		t.Errorf("node 3's read cost %v store GETs, want 0", after-mid)
	}
	if hits3 == 0 {
		t.Error("node 3 had no neighbor hits")
	}
}

// TestNeighborRandomReadsFillOnce: concurrent random readers on two nodes
// missing the same pages cost one GET per page (single flight at the
// owner, or at the reader for its own pages).
func TestNeighborRandomReadsFillOnce(t *testing.T) {
	cl := newNBCluster(t, 3, nbOptions{})
	const first, nblocks = 300, 4
	blocks := cl.writeFile(t, first, nblocks, 3)
	before := cl.gets()
	var wg sync.WaitGroup
	for _, nd := range cl.nodes[1:] {
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				readAll(t, nd.c, blocks, first, cache.AccessRandom)
			}()
		}
	}
	wg.Wait()
	gets := cl.gets() - before
	t.Logf("store GETs: %v for %d pages read by 8 readers on 2 nodes", gets, pagesOf(blocks))
	// A reader's own pages are single-flighted at the reader; pages
	// owned by the other reader can be fetched by both when both miss
	// before either has it: slack of one GET per page.
	if gets > float64(2*pagesOf(blocks)) {
		t.Errorf("%v store GETs for %d pages", gets, pagesOf(blocks))
	}
}

// TestNeighborOwnerDiesMidRead: the owner of a third of the pages loses
// its transport while node 3 reads: every read completes with the right
// bytes, the slowest within a bound, and the dead peer is marked down.
func TestNeighborOwnerDiesMidRead(t *testing.T) {
	cl := newNBCluster(t, 3, nbOptions{callTimeout: 300 * time.Millisecond})
	const first, nblocks = 400, 16
	blocks := cl.writeFile(t, first, nblocks, 4)
	n1, n3 := cl.nodes[0], cl.nodes[2]
	for id := uint64(first); id < first+nblocks; id++ {
		n1.c.PutBlock(context.Background(), id, blocks[id], cache.AccessRandom)
	}
	waitOffers(t, n1, float64(remotePages(cl, n1.id, blocks)))
	// Read the first half, kill node 1, read it all.
	half := make(map[uint64][]byte)
	for id := uint64(first); id < first+nblocks/2; id++ {
		half[id] = blocks[id]
	}
	readAll(t, n3.c, half, first, cache.AccessRandom)
	n1.close()
	start := time.Now()
	slowest := readAll(t, n3.c, blocks, first, cache.AccessRandom)
	t.Logf("after the owner died: full read in %v, slowest page %v", time.Since(start), slowest)
	if slowest > 2*time.Second {
		t.Errorf("slowest page read took %v after the owner died", slowest)
	}
	if !n3.nb.PeerDown(n1.id) {
		t.Error("node 3 does not treat the dead node 1 as down")
	}
}

// TestNeighborUnauthenticatedGetsNothing: a transport with a wrong secret
// cannot call the cache's ops.
func TestNeighborUnauthenticatedGetsNothing(t *testing.T) {
	cl := newNBCluster(t, 2, nbOptions{})
	blocks := cl.writeFile(t, 500, 1, 5)
	cl.nodes[0].c.PutBlock(context.Background(), 500, blocks[500], cache.AccessRandom)
	bad, err := tcpfallback.New(context.Background(), tcpfallback.Config{NodeID: "intruder", Secret: []byte("wrong"), Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close()
	req := make([]byte, 20) // opReadPage of block 500 page 0, any length
	req[0], req[1] = 500&0xff, 500>>8
	for _, op := range []uint16{0x0200, 0x0201, 0x0203} {
		resp, err := bad.Call(context.Background(), cl.nodes[0].tr.Addr(), op, req)
		if err == nil || !errors.Is(err, tcpfallback.ErrUnauthenticated) && resp != nil {
			t.Fatalf("op 0x%04x with a wrong secret: resp %d bytes, err %v", op, len(resp), err)
		}
	}
}

// corruptingTransport delivers calls to another transport and corrupts
// read-page responses as told.
type corruptingTransport struct {
	cache.NeighborTransport
	mangle func(resp []byte) []byte
}

func (c *corruptingTransport) CallInto(ctx context.Context, addr string, op uint16, req, resp []byte) ([]byte, error) {
	out, err := c.NeighborTransport.CallInto(ctx, addr, op, req, resp)
	if err == nil && op == 0x0201 {
		out = c.mangle(out)
	}
	return out, err
}

// TestNeighborRejectsCorruptResponses: flipped page bytes, a lying
// length, truncation and random bytes from a neighbor are all misses:
// the reader returns the right bytes from the store.
func TestNeighborRejectsCorruptResponses(t *testing.T) {
	mangles := map[string]func([]byte) []byte{
		"flip": func(b []byte) []byte {
			if len(b) > 40 {
				b[40] ^= 0xff
			}
			return b
		},
		"truncate": func(b []byte) []byte { return b[:len(b)/2] },
		"random": func(b []byte) []byte {
			r := rand.New(rand.NewPCG(uint64(len(b)), 9))
			for i := range b {
				b[i] = byte(r.Uint32())
			}
			return b
		},
		"length": func(b []byte) []byte {
			if len(b) > 8 {
				b[4]++
			}
			return b
		},
	}
	for name, mangle := range mangles {
		t.Run(name, func(t *testing.T) {
			cl := newNBCluster(t, 2, nbOptions{})
			blocks := cl.writeFile(t, 600, 2, 6)
			n1, n2 := cl.nodes[0], cl.nodes[1]
			for id, b := range blocks {
				n1.c.PutBlock(context.Background(), id, b, cache.AccessRandom)
			}
			reg := prometheus.NewRegistry()
			nb, err := cache.NewNeighborTier(cache.NeighborConfig{
				Self: "reader", Membership: append(cache.StaticMembership{{ID: "reader"}}, cl.member[0]),
				Transport: &corruptingTransport{NeighborTransport: n2.tr, mangle: mangle},
				PageSize:  nbPage, BlockSize: nbBlock, Registerer: reg, Logger: slog.New(slog.DiscardHandler),
			})
			if err != nil {
				t.Fatal(err)
			}
			c, err := cache.New(cache.Config{PageSize: nbPage, MemBytes: 16 << 20, Registerer: reg}, cl.st, nb)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			readAll(t, c, blocks, 600, cache.AccessRandom)
			if hits := metric(reg, "datenlord_cache_hits_total", map[string]string{"tier": "neighbor"}); hits != 0 {
				t.Errorf("%v neighbor hits from a corrupting neighbor", hits)
			}
			if bad := metric(reg, "datenlord_neighbor_bad_responses_total", nil); bad == 0 {
				t.Error("no bad responses counted")
			}
		})
	}
}

// TestNeighborWarmAndLocate: WarmBlock puts every page at its owner (one
// GET per block), Locate reports them there, and a later read costs no GET.
func TestNeighborWarmAndLocate(t *testing.T) {
	cl := newNBCluster(t, 3, nbOptions{})
	const first, nblocks = 700, 8
	blocks := cl.writeFile(t, first, nblocks, 7)
	n1, n3 := cl.nodes[0], cl.nodes[2]
	before := cl.gets()
	var keys []cache.PageKey
	for id := uint64(first); id < first+nblocks; id++ {
		_, fetched, err := n1.nb.WarmBlock(context.Background(), id, len(blocks[id]))
		if err != nil {
			t.Fatal(err)
		}
		if !fetched {
			t.Errorf("cold block %d: not fetched from the store", id)
		}
		for idx := 0; idx*nbPage < len(blocks[id]); idx++ {
			keys = append(keys, cache.PageKey{Block: id, Index: uint32(idx)})
		}
	}
	if g := cl.gets() - before; g != nblocks {
		t.Errorf("cold warm-up cost %v GETs for %d blocks, want one per block", g, nblocks)
	}
	states, errs := n3.nb.Locate(context.Background(), keys)
	if len(errs) != 0 {
		t.Fatal(errs)
	}
	owners := n3.nb.Owners(keys)
	for i, k := range keys {
		if !states[owners[i].ID][i].Memory {
			t.Errorf("page %v not in the memory of its owner %s", k, owners[i].ID)
		}
	}
	before = cl.gets()
	readAll(t, n3.c, blocks, first, cache.AccessSequential)
	if g := cl.gets() - before; g != 0 {
		t.Errorf("read after warm-up cost %v GETs", g)
	}
}
