package cache

import (
	"context"
	"log/slog"
	"testing"

	"github.com/datenlord/datenlord-go/store"
	"github.com/datenlord/datenlord-go/tcpfallback"
)

// TestNeighborFastPathDetectsArenaCorruption: over tcpfallback the owner
// serves pages inline without rehashing them and the transport skips its
// frame CRC over the page, so the reader's check against the slot CRC is
// the only one: a bit flipped in the owner's arena must still be a miss.
func TestNeighborFastPathDetectsArenaCorruption(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	const page = 4 << 10
	st, err := store.Open(ctx, "file://"+t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	var members StaticMembership
	var trs []*tcpfallback.Transport
	for _, id := range []string{"reader", "owner"} {
		tr, err := tcpfallback.New(ctx, tcpfallback.Config{NodeID: id, Listen: "127.0.0.1:0", Secret: []byte("s"), Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		defer tr.Close()
		trs = append(trs, tr)
		members = append(members, Node{ID: id, Addr: tr.Addr()})
	}
	var tiers []*NeighborTier
	var caches []*Cache
	for i, tr := range trs {
		nb, err := NewNeighborTier(NeighborConfig{Self: members[i].ID, Membership: members, Transport: tr, PageSize: page, BlockSize: 8 * page, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		if nb.fast == nil {
			t.Fatal("tcpfallback does not provide the fast path")
		}
		c, err := New(Config{PageSize: page, MemBytes: 16 << 20, Logger: log}, st, nb)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := nb.Serve(c); err != nil {
			t.Fatal(err)
		}
		tiers, caches = append(tiers, nb), append(caches, c)
	}
	data := make([]byte, 8*page)
	for i := range data {
		data[i] = byte(i * 13)
	}
	var key PageKey
	found := false
	for block := uint64(1); !found; block++ {
		caches[1].PutBlock(ctx, block, data, AccessRandom)
		for idx := range uint32(8) {
			if o, _ := OwnerOf(members, PageKey{Block: block, Index: idx}); o.ID == "owner" {
				key, found = PageKey{Block: block, Index: idx}, true
				break
			}
		}
	}
	dst := make([]byte, page)
	if n, ok, err := tiers[0].GetSized(ctx, key, page, dst, AccessRandom); err != nil || !ok || n != page {
		t.Fatalf("clean read: n %d ok %v err %v", n, ok, err)
	}
	want := data[int(key.Index)*page : int(key.Index+1)*page]
	if string(dst) != string(want) {
		t.Fatal("clean read returned wrong bytes")
	}
	// Flip a bit in the owner's slot, behind the arena's back.
	mt := caches[1].memory
	mt.mu.Lock()
	s, ok := mt.index[key]
	if !ok {
		mt.mu.Unlock()
		t.Fatal("page not in the owner's arena")
	}
	seg, _, off := mt.slotLoc(s)
	seg.mem[off+slotHeaderSize+100] ^= 0x01
	mt.mu.Unlock()
	if _, ok, err := tiers[0].GetSized(ctx, key, 0, dst, AccessRandom); err != nil || ok {
		t.Fatalf("corrupt slot read: ok %v err %v, want a miss", ok, err)
	}
}
