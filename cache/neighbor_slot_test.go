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

// fakeSlots is the node transport plus a SlotReader that copies slots
// straight out of the owners' arenas (in process): the one-sided path of
// RDMA without a device.
type fakeSlots struct {
	*tcpfallback.Transport
	mu     sync.Mutex
	arenas map[string]*cache.Cache // by address
	fail   bool
	reads  int
}

func (f *fakeSlots) ReadSlot(_ context.Context, addr string, loc cache.SlotLocation, dst []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		return errors.New("fake one-sided path down")
	}
	c := f.arenas[addr]
	if c == nil {
		return fmt.Errorf("no arena at %s", addr)
	}
	seg, ok := c.ArenaSegment(loc.Segment)
	n := cache.SlotHeaderSize + int(loc.Length)
	if !ok || loc.Offset+uint64(n) > uint64(len(seg)) {
		return errors.New("slot outside the arena")
	}
	copy(dst[:n], seg[loc.Offset:])
	f.reads++
	return nil
}

// TestNeighborOneSidedReadsCounted: with a SlotReader, a reader without
// location hints asks the owner for the location only (opLookup; the
// owner fills from the store on a miss) and reads the slot one-sidedly,
// so every page read after warm-up counts as
// datenlord_neighbor_reads_total{transport="rdma"} and {transport="tcp"}
// stays at zero; with the one-sided path down, pages come over TCP and
// count as tcp. A TCP-only tier of the same node counts only tcp.
func TestNeighborOneSidedReadsCounted(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	st, err := store.Open(ctx, "file://"+t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	arenas := make(map[string]*cache.Cache)
	var members cache.StaticMembership
	var trs []*fakeSlots
	for _, id := range []string{"a", "b"} {
		tr, err := tcpfallback.New(ctx, tcpfallback.Config{NodeID: id, Listen: "127.0.0.1:0", Secret: nbSecret, DialTimeout: 2 * time.Second, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		trs = append(trs, &fakeSlots{Transport: tr, arenas: arenas})
		members = append(members, cache.Node{ID: id, Addr: tr.Addr()})
	}
	var nbs []*cache.NeighborTier
	var regs []*prometheus.Registry
	for i, id := range []string{"a", "b"} {
		reg := prometheus.NewRegistry()
		nb, err := cache.NewNeighborTier(cache.NeighborConfig{Self: id, Membership: members, Transport: trs[i], TransportName: "rdma",
			PageSize: nbPage, BlockSize: nbBlock, CallTimeout: 2 * time.Second, Registerer: reg, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		defer nb.Close()
		c, err := cache.New(cache.Config{PageSize: nbPage, MemBytes: 64 << 20, Registerer: reg, Logger: log}, st, nb)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := nb.Serve(c); err != nil {
			t.Fatal(err)
		}
		arenas[members[i].Addr] = c
		nbs = append(nbs, nb)
		regs = append(regs, reg)
	}
	b, regB := nbs[1], regs[1]
	// Pages A owns, in the store only: A fills them on B's lookups.
	r := rand.New(rand.NewPCG(3, 4))
	data := make(map[cache.PageKey][]byte)
	var owned []cache.PageKey
	for blk := uint64(1); blk <= 4; blk++ {
		buf := make([]byte, nbBlock)
		for i := range buf {
			buf[i] = byte(r.Uint32())
		}
		if err := st.Put(ctx, blk, buf); err != nil {
			t.Fatal(err)
		}
		for i := range uint32(nbBlock / nbPage) {
			k := cache.PageKey{Block: blk, Index: i}
			data[k] = buf[int(i)*nbPage : int(i+1)*nbPage]
			if o, _ := cache.OwnerOf(members, k); o.ID == "a" {
				owned = append(owned, k)
			}
		}
	}
	reads := func(reg *prometheus.Registry, transport string) float64 {
		return metric(reg, "datenlord_neighbor_reads_total", map[string]string{"transport": transport})
	}
	dst := make([]byte, nbPage)
	get := func(nb *cache.NeighborTier, k cache.PageKey) {
		t.Helper()
		clear(dst)
		n, ok, err := nb.GetSized(ctx, k, nbPage, dst, cache.AccessRandom)
		if err != nil || !ok || !bytes.Equal(dst[:n], data[k]) {
			t.Fatalf("B reads %v: n=%d ok=%v err=%v", k, n, ok, err)
		}
	}
	for round := range 3 {
		for _, k := range owned {
			get(b, k)
		}
		if got, want := reads(regB, "rdma"), float64((round+1)*len(owned)); got != want {
			t.Fatalf("round %d: reads{rdma} = %v, want %v", round, got, want)
		}
		if got := reads(regB, "tcp"); got != 0 {
			t.Fatalf("round %d: reads{tcp} = %v, want 0 (no page bytes over TCP)", round, got)
		}
	}
	t.Logf("B read %d owned pages 3 times: reads{rdma}=%v reads{tcp}=%v (fake one-sided reads %d)", len(owned), reads(regB, "rdma"), reads(regB, "tcp"), trs[1].reads)

	// The one-sided path down: the same pages over TCP, counted as tcp.
	trs[1].mu.Lock()
	trs[1].fail = true
	trs[1].mu.Unlock()
	for _, k := range owned {
		get(b, k)
	}
	if got := reads(regB, "tcp"); got != float64(len(owned)) {
		t.Fatalf("one-sided path down: reads{tcp} = %v, want %d", got, len(owned))
	}

	// A TCP-only tier (no SlotReader) never looks up and counts tcp.
	reg := prometheus.NewRegistry()
	tcpOnly, err := cache.NewNeighborTier(cache.NeighborConfig{Self: "b", Membership: members, Transport: trs[1].Transport,
		PageSize: nbPage, BlockSize: nbBlock, Registerer: reg, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer tcpOnly.Close()
	for _, k := range owned {
		get(tcpOnly, k)
	}
	if reads(reg, "tcp") != float64(len(owned)) || reads(reg, "rdma") != 0 {
		t.Fatalf("TCP-only tier: reads{tcp}=%v reads{rdma}=%v", reads(reg, "tcp"), reads(reg, "rdma"))
	}
}
