package rdmaslot_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/rdma"
	"github.com/datenlord/datenlord-go/rdma/rdmaslot"
	"github.com/datenlord/datenlord-go/store"
	"github.com/datenlord/datenlord-go/tcpfallback"
)

const (
	page  = 4096
	block = 64 << 10
)

var secret = []byte("rdmaslot-test-secret")

type node struct {
	id    string
	tr    *tcpfallback.Transport
	slots *rdmaslot.Transport
	nb    *cache.NeighborTier
	c     *cache.Cache
	dev   *rdma.Device
	reg   *prometheus.Registry
}

func (n *node) close() {
	n.slots.Close()
	n.nb.Close()
	n.tr.Close()
	n.c.Close()
	n.dev.Close()
}

func openOrSkip(t *testing.T) *rdma.Device {
	t.Helper()
	d, err := rdma.Open(rdma.Config{})
	if rdma.Unavailable(err) {
		if os.Getenv("DATENLORD_RDMA_REQUIRED") != "" {
			t.Fatalf("DATENLORD_RDMA_REQUIRED is set but: %v", err)
		}
		msg := fmt.Sprintf("SKIP: no RDMA device (run make test-rdma): %v", err)
		fmt.Fprintln(os.Stderr, "!!!!", msg)
		t.Skip(msg)
	}
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestTwoNodesRDMA: two cache nodes in one process over tcpfallback on
// 127.0.0.1, each with its own device context on the same rxe device; B
// reads pages A owns from A's arena with RDMA READs (the first of each
// page after a location lookup over TCP that carries no page bytes),
// checking bytes and the slot headers, and
// datenlord_neighbor_reads_total{transport="rdma"} rises while
// {transport="tcp"} stays at zero; a rewritten slot is detected and looked
// up again; a vanished owner costs an error and a fallback, never wrong
// bytes. It prints READ latency p50/p99 over RDMA
// and over TCP.
func TestTwoNodesRDMA(t *testing.T) {
	openOrSkip(t).Close()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	st, err := store.Open(ctx, "file://"+t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var members cache.StaticMembership
	var nodes []*node
	for _, id := range []string{"a", "b"} {
		tr, err := tcpfallback.New(ctx, tcpfallback.Config{NodeID: id, Listen: "127.0.0.1:0", Secret: secret, DialTimeout: 2 * time.Second, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		dev, err := rdma.Open(rdma.Config{})
		if err != nil {
			t.Fatal(err)
		}
		slots, err := rdmaslot.New(rdmaslot.Config{Node: tr, Device: dev, SlotBytes: cache.SlotHeaderSize + page,
			QP: rdma.QPConfig{TimeoutExponent: 10, RetryCount: 2}, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		nodes = append(nodes, &node{id: id, tr: tr, slots: slots, dev: dev})
		members = append(members, cache.Node{ID: id, Addr: tr.Addr()})
	}
	for _, n := range nodes {
		reg := prometheus.NewRegistry()
		nb, err := cache.NewNeighborTier(cache.NeighborConfig{Self: n.id, Membership: members, Transport: n.slots, TransportName: "rdma",
			PageSize: page, BlockSize: block, CallTimeout: 2 * time.Second, Registerer: reg, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		c, err := cache.New(cache.Config{PageSize: page, MemBytes: 16 << 20, Registerer: reg, Logger: log}, st, nb)
		if err != nil {
			t.Fatal(err)
		}
		if err := nb.Serve(c); err != nil {
			t.Fatal(err)
		}
		n.slots.Serve(c)
		n.nb, n.c, n.reg = nb, c, reg
	}
	a, b := nodes[0], nodes[1]
	defer b.close()
	aClosed := false
	defer func() {
		if !aClosed {
			a.close()
		}
	}()

	// 8 blocks in the store; A reads (and so caches) the pages it owns.
	r := rand.New(rand.NewPCG(1, 2))
	data := map[cache.PageKey][]byte{}
	var owned []cache.PageKey
	for blk := uint64(1); blk <= 8; blk++ {
		buf := make([]byte, block)
		for i := range buf {
			buf[i] = byte(r.Uint32())
		}
		if err := st.Put(ctx, blk, buf); err != nil {
			t.Fatal(err)
		}
		for i := range uint32(block / page) {
			k := cache.PageKey{Block: blk, Index: i}
			data[k] = buf[int(i)*page : int(i+1)*page]
			if o, _ := cache.OwnerOf(members, k); o.ID == "a" {
				owned = append(owned, k)
			}
		}
	}
	dst := make([]byte, page)
	for _, k := range owned {
		if n, err := a.c.ReadPage(ctx, k, page, dst, cache.AccessRandom); err != nil || !bytes.Equal(dst[:n], data[k]) {
			t.Fatalf("A reads %v: %v", k, err)
		}
	}
	t.Logf("A owns and caches %d of %d pages", len(owned), len(data))

	get := func(nb *cache.NeighborTier, k cache.PageKey) {
		t.Helper()
		clear(dst)
		n, ok, err := nb.GetSized(ctx, k, page, dst, cache.AccessRandom)
		if err != nil || !ok || !bytes.Equal(dst[:n], data[k]) {
			t.Fatalf("B reads %v from A: n=%d ok=%v err=%v (bytes equal %v)", k, n, ok, err, bytes.Equal(dst[:n], data[k]))
		}
	}
	// Every read is one-sided: the first of each page after a location
	// lookup over TCP (no page bytes), later ones at the cached location.
	// The tier checks key, generation and CRC, the test the bytes.
	before := b.slots.Stats()
	for _, k := range owned {
		get(b.nb, k)
		if _, ok := b.nb.Hint(k); !ok {
			t.Fatalf("no location hint for %v after a read from its owner", k)
		}
	}
	rdma0, tcp0 := reads(b.reg, "rdma"), reads(b.reg, "tcp")
	for range 3 {
		for _, k := range owned {
			get(b.nb, k)
		}
	}
	st1 := b.slots.Stats()
	if got := st1.Reads - before.Reads; got != uint64(4*len(owned)) {
		t.Fatalf("%d RDMA READs for %d page reads (stats %+v)", got, 4*len(owned), st1)
	}
	if !b.slots.Connected(a.tr.Addr()) {
		t.Fatal("B has no QP to A")
	}
	rdma1, tcp1 := reads(b.reg, "rdma"), reads(b.reg, "tcp")
	fmt.Printf("NEIGHBOR-READS after warm-up: rdma=%v tcp=%v; after %d more page reads: rdma=%v tcp=%v\n", rdma0, tcp0, 3*len(owned), rdma1, tcp1)
	if rdma0 != float64(len(owned)) || rdma1-rdma0 != float64(3*len(owned)) {
		t.Fatalf("datenlord_neighbor_reads_total{transport=\"rdma\"}: %v after the first %d reads, %v after %d more", rdma0, len(owned), rdma1, 3*len(owned))
	}
	if tcp0 != 0 || tcp1 != 0 {
		t.Fatalf("datenlord_neighbor_reads_total{transport=\"tcp\"} = %v, %v: page bytes went over TCP", tcp0, tcp1)
	}
	t.Logf("B read %d pages from A's arena by RDMA READ, bytes and headers checked; reads{rdma}=%v reads{tcp}=%v", 4*len(owned), rdma1, tcp1)

	// Latency: the same pages over RDMA, and over TCP (a tier of B's
	// without the slot reader).
	tcpOnly, err := cache.NewNeighborTier(cache.NeighborConfig{Self: "b", Membership: members, Transport: b.tr,
		PageSize: page, BlockSize: block, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer tcpOnly.Close()
	for _, path := range []struct {
		name string
		nb   *cache.NeighborTier
	}{{"neighbor-rdma", b.nb}, {"neighbor-tcp", tcpOnly}} {
		var lat []time.Duration
		for i := range 2200 {
			k := owned[i%len(owned)]
			start := time.Now()
			get(path.nb, k)
			if i >= 200 {
				lat = append(lat, time.Since(start))
			}
		}
		slices.Sort(lat)
		fmt.Printf("RDMA-LAT %s size=%d p50_us=%.2f p99_us=%.2f\n", path.name, page,
			float64(lat[len(lat)/2].Nanoseconds())/1e3, float64(lat[len(lat)*99/100].Nanoseconds())/1e3)
	}

	// A rewritten slot: A drops block X and caches block Y (reusing the
	// slots); B's hints for X now point at Y's pages: the header check
	// catches it, and B gets X's bytes over TCP.
	var x, y uint64 = owned[0].Block, 0
	for _, k := range owned {
		if k.Block != x {
			y = k.Block
			break
		}
	}
	a.c.DropBlock(ctx, x)
	a.c.DropBlock(ctx, y)
	for _, k := range owned {
		if k.Block == y {
			if _, err := a.c.ReadPage(ctx, k, page, dst, cache.AccessRandom); err != nil {
				t.Fatal(err)
			}
		}
	}
	bad := 0
	for _, k := range owned {
		if k.Block != x {
			continue
		}
		loc, _ := b.nb.Hint(k)
		get(b.nb, k) // right bytes, whatever the slot holds now
		if nl, ok := b.nb.Hint(k); !ok || nl.Generation != loc.Generation {
			bad++
		}
	}
	t.Logf("after A rewrote its slots: %d stale locations detected and looked up again, bytes correct; reads{rdma}=%v reads{tcp}=%v", bad, reads(b.reg, "rdma"), reads(b.reg, "tcp"))
	if bad == 0 {
		t.Error("no stale slot detected after the owner reused its slots")
	}

	// The owner vanishes (its QPs and regions destroyed, then its
	// transport): B's READ fails, B falls back, and the application
	// (B's Cache) still reads correct bytes, from the store.
	k := owned[len(owned)-1]
	get(b.nb, k) // hint fresh, via RDMA
	a.slots.Close()
	start := time.Now()
	get(b.nb, k) // RDMA fails; TCP still answers
	t.Logf("after A's QPs vanished: READ failed and fell back to TCP in %v (stats %+v, reads{tcp}=%v)", time.Since(start).Round(time.Millisecond), b.slots.Stats(), reads(b.reg, "tcp"))
	if reads(b.reg, "tcp") == 0 {
		t.Error("the fallback read is not counted as reads{transport=\"tcp\"}")
	}
	if b.slots.Stats().Failures == 0 {
		t.Error("no RDMA READ failure counted after the owner's QPs vanished")
	}
	a.close()
	aClosed = true
	n, err := b.c.ReadPage(ctx, k, page, dst, cache.AccessRandom)
	if err != nil || !bytes.Equal(dst[:n], data[k]) {
		t.Fatalf("B's cache after A vanished: %v", err)
	}
	t.Log("after A vanished: B's cache read the page from the store, bytes correct")
}

// reads returns datenlord_neighbor_reads_total{transport} from reg.
func reads(reg *prometheus.Registry, transport string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		return -1
	}
	for _, mf := range mfs {
		if mf.GetName() != "datenlord_neighbor_reads_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetName() == "transport" && lp.GetValue() == transport {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// BenchmarkNeighborReadRDMA: one reader goroutine reads pages of the
// owner's through the neighbor tier by RDMA READ (slot header and page,
// checked) — the neighbor/rdma row of bench tiers, for profiling in the
// rxe guest (-test.bench NeighborReadRDMA -test.cpuprofile).
func BenchmarkNeighborReadRDMA(b *testing.B) {
	d, err := rdma.Open(rdma.Config{})
	if err != nil {
		b.Skipf("no RDMA device: %v", err)
	}
	d.Close()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	st, err := store.Open(ctx, "file://"+b.TempDir(), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	var members cache.StaticMembership
	var nodes []*node
	for _, id := range []string{"a", "b"} {
		tr, err := tcpfallback.New(ctx, tcpfallback.Config{NodeID: id, Listen: "127.0.0.1:0", Secret: secret, DialTimeout: 2 * time.Second, Logger: log})
		if err != nil {
			b.Fatal(err)
		}
		dev, err := rdma.Open(rdma.Config{})
		if err != nil {
			b.Fatal(err)
		}
		slots, err := rdmaslot.New(rdmaslot.Config{Node: tr, Device: dev, SlotBytes: cache.SlotHeaderSize + page, Logger: log})
		if err != nil {
			b.Fatal(err)
		}
		nodes = append(nodes, &node{id: id, tr: tr, slots: slots, dev: dev})
		members = append(members, cache.Node{ID: id, Addr: tr.Addr()})
	}
	for _, n := range nodes {
		nb, err := cache.NewNeighborTier(cache.NeighborConfig{Self: n.id, Membership: members, Transport: n.slots, TransportName: "rdma",
			PageSize: page, BlockSize: block, CallTimeout: 2 * time.Second, Logger: log})
		if err != nil {
			b.Fatal(err)
		}
		c, err := cache.New(cache.Config{PageSize: page, MemBytes: 16 << 20, Logger: log}, st, nb)
		if err != nil {
			b.Fatal(err)
		}
		if err := nb.Serve(c); err != nil {
			b.Fatal(err)
		}
		n.slots.Serve(c)
		n.nb, n.c = nb, c
	}
	a, r := nodes[0], nodes[1]
	defer a.close()
	defer r.close()
	buf := make([]byte, block)
	var owned []cache.PageKey
	for blk := uint64(1); blk <= 8; blk++ {
		for i := range buf {
			buf[i] = byte(i*7 + int(blk))
		}
		if err := st.Put(ctx, blk, buf); err != nil {
			b.Fatal(err)
		}
		for i := range uint32(block / page) {
			k := cache.PageKey{Block: blk, Index: i}
			if o, _ := cache.OwnerOf(members, k); o.ID == "a" {
				if _, err := a.c.ReadPage(ctx, k, page, buf[:page], cache.AccessRandom); err != nil {
					b.Fatal(err)
				}
				owned = append(owned, k)
			}
		}
	}
	dst := make([]byte, page)
	for _, k := range owned { // locations looked up, QP connected
		if _, ok, err := r.nb.GetSized(ctx, k, page, dst, cache.AccessRandom); err != nil || !ok {
			b.Fatalf("warm-up read of %v: ok=%v err=%v", k, ok, err)
		}
	}
	before := r.slots.Stats().Reads
	b.SetBytes(page)
	b.ResetTimer()
	for i := range b.N {
		if _, ok, err := r.nb.GetSized(ctx, owned[i%len(owned)], page, dst, cache.AccessRandom); err != nil || !ok {
			b.Fatalf("read: ok=%v err=%v", ok, err)
		}
	}
	b.StopTimer()
	if got := r.slots.Stats().Reads - before; got != uint64(b.N) {
		b.Fatalf("%d RDMA READs for %d page reads", got, b.N)
	}
}
