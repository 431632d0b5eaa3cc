package cache

import (
	"context"
	"errors"
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
	const page = 4 << 10
	nodes := newInlineNodes(t, page, []string{"reader", "owner"}, 2)
	members, tiers, caches := nodes.members, nodes.tiers, nodes.caches
	if tiers[0].fast == nil {
		t.Fatal("tcpfallback does not provide the fast path")
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

// TestNeighborInlineSendReleasesPins: pages sent from their arena slots
// (pinned until written) leave no slot pinned, so eviction and Close are
// never held up; and liveOwners agrees with hrwOwner over liveNodes.
func TestNeighborInlineSendReleasesPins(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	const page = 16 << 10
	nodes := newInlineNodes(t, page, []string{"reader", "owner", "third"}, 2)
	members, trs, tiers, caches := nodes.members, nodes.trs, nodes.tiers, nodes.caches
	data := make([]byte, 8*page)
	for i := range data {
		data[i] = byte(i * 13)
	}
	dst := make([]byte, page)
	reads := 0
	for block := uint64(1); block <= 8; block++ {
		caches[1].PutBlock(ctx, block, data, AccessRandom)
		for idx := range uint32(8) {
			key := PageKey{Block: block, Index: idx}
			if o, _ := OwnerOf(members[:2], key); o.ID != "owner" {
				continue
			}
			n, ok, err := tiers[0].GetSized(ctx, key, page, dst, AccessRandom)
			if err != nil || !ok || n != page || string(dst) != string(data[int(idx)*page:int(idx+1)*page]) {
				t.Fatalf("read %v: n %d ok %v err %v", key, n, ok, err)
			}
			reads++
		}
	}
	if reads == 0 {
		t.Fatal("the owner owns no page")
	}
	mt := caches[1].memory
	mt.mu.Lock()
	for _, seg := range mt.segs {
		if seg == nil {
			continue
		}
		for i := range seg.refs {
			if r := seg.refs[i].Load(); r != 0 {
				t.Errorf("slot %d of a segment still pinned (%d)", i, r)
			}
		}
	}
	mt.mu.Unlock()

	// liveOwners is hrwOwner over liveNodes, without the list.
	nb, err := NewNeighborTier(NeighborConfig{Self: "reader", Membership: members, Transport: trs[0], PageSize: page, BlockSize: 8 * page, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Close()
	for down := range 2 {
		if down == 1 {
			nb.callFailed(ctx, members[1], errors.New("test: down"))
		}
		live := nb.liveNodes()
		for i := range 500 {
			key := PageKey{Block: uint64(i / 8), Index: uint32(i % 8)}
			owner, coord, clustered := nb.liveOwners(key, true)
			wantOwner, _ := hrwOwner(live, key)
			wantCoord, _ := hrwOwner(live, blockKey(key.Block))
			if owner != wantOwner || coord != wantCoord || clustered != (len(live) > 1) {
				t.Fatalf("down %d key %v: liveOwners %v %v %v, want %v %v %v", down, key, owner, coord, clustered, wantOwner, wantCoord, len(live) > 1)
			}
		}
	}
}

// inlineNodes are nodes of the fast-path tests: a transport for every id,
// and for the first tiered ones a neighbor tier (over those nodes) and a
// cache serving it, on one shared store. Everything is closed at the end of
// the test.
type inlineNodes struct {
	members StaticMembership
	trs     []*tcpfallback.Transport
	tiers   []*NeighborTier
	caches  []*Cache
}

func newInlineNodes(t *testing.T, page int, ids []string, tiered int) *inlineNodes {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	st, err := store.Open(ctx, "file://"+t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	n := &inlineNodes{}
	for _, id := range ids {
		tr, err := tcpfallback.New(ctx, tcpfallback.Config{NodeID: id, Listen: "127.0.0.1:0", Secret: []byte("s"), Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tr.Close() })
		n.trs = append(n.trs, tr)
		n.members = append(n.members, Node{ID: id, Addr: tr.Addr()})
	}
	for i, tr := range n.trs[:tiered] {
		nb, err := NewNeighborTier(NeighborConfig{Self: ids[i], Membership: n.members[:tiered], Transport: tr, PageSize: page, BlockSize: 8 * page, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nb.Close() })
		c, err := New(Config{PageSize: page, MemBytes: 16 << 20, Logger: log}, st, nb)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if err := nb.Serve(c); err != nil {
			t.Fatal(err)
		}
		n.tiers, n.caches = append(n.tiers, nb), append(n.caches, c)
	}
	return n
}
