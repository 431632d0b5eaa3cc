// Package tierstest starts an in-process cache node that serves what
// `bench tiers --addr` asks a running node for (its neighbor tier, the
// bench ops and, with an RDMA hook, its arena by one-sided READs), for
// tests of the remote mode that do not start node processes.
package tierstest

import (
	"context"
	"crypto/rand"
	"testing"

	"github.com/datenlord/datenlord-go/bench/tiers"
	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/store"
	"github.com/datenlord/datenlord-go/tcpfallback"
)

// Node is a started node.
type Node struct {
	// Addr is its transport address; Secret the cluster secret.
	Addr   string
	Secret []byte
	// Cache holds its pages.
	Cache *cache.Cache
}

// StartNode starts node "n1" on 127.0.0.1 with pageSize pages and blocks
// of 8 pages, holding blocks*8 pages in memory; hook, when set, gives it
// one-sided slot reads as `serve` does with RDMA. Everything stops when
// the test ends.
func StartNode(tb testing.TB, pageSize, blocks int, hook tiers.RDMAHook) *Node {
	tb.Helper()
	ctx := context.Background()
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		tb.Fatal(err)
	}
	st, err := store.Open(ctx, "file://"+tb.TempDir(), store.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = st.Close() })
	tr, err := tcpfallback.New(ctx, tcpfallback.Config{NodeID: "n1", Listen: "127.0.0.1:0", Secret: secret})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = tr.Close() })
	var transport cache.NeighborTransport = tr
	var rn tiers.RDMANode
	if hook != nil {
		if rn, err = hook.Attach(ctx, tr, pageSize); err != nil {
			tb.Fatal(err)
		}
		transport = rn.Transport()
	}
	const perBlock = 8
	nb, err := cache.NewNeighborTier(cache.NeighborConfig{Self: "n1", Membership: cache.StaticMembership{{ID: "n1", Addr: tr.Addr()}},
		Transport: transport, PageSize: pageSize, BlockSize: perBlock * pageSize})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = nb.Close() })
	stride := int64(pageSize + cache.SlotHeaderSize)
	c, err := cache.New(cache.Config{PageSize: pageSize, MemBytes: int64(blocks*perBlock+16) * stride}, st, nb)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = c.Close() })
	if rn != nil {
		tb.Cleanup(func() { _ = rn.Close() }) // before the arena goes
	}
	if err := nb.Serve(c); err != nil {
		tb.Fatal(err)
	}
	if rn != nil {
		rn.Serve(c)
	}
	ops := tiers.ServeNodeOps(tr, c, "n1", perBlock*pageSize, "127.0.0.1:0", nil)
	tb.Cleanup(ops.Close)
	block := make([]byte, perBlock*pageSize)
	for b := 1; b <= blocks; b++ {
		for i := range block {
			block[i] = byte(i*31 + b)
		}
		c.PutBlock(ctx, uint64(b), block, cache.AccessRandom)
	}
	return &Node{Addr: tr.Addr(), Secret: secret, Cache: c}
}
