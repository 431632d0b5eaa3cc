package tiers

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/store"
	"github.com/datenlord/datenlord-go/tcpfallback"
)

// neighborSetup starts two cache nodes in this process, each with its own
// tcpfallback transport on 127.0.0.1 and a neighbor tier: the "owner"
// holds the working set in memory, the "reader" reads it through
// NeighborTier.GetSized (request, owner's memory-tier read with its CRC
// check, response read straight into the caller's buffer, CRC check).
// The baseline is a raw Go TCP ping-pong of the same sizes on the same
// loopback: a 16-byte request, a page-sized response.
func (r *runner) neighborSetup(ctx context.Context, size int) (setupResult, error) {
	var cleanups []func()
	cleanup := func() {
		for i := len(cleanups) - 1; i >= 0; i-- {
			cleanups[i]()
		}
	}
	fail := func(err error) (setupResult, error) { cleanup(); return setupResult{}, err }

	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return fail(fmt.Errorf("cluster secret: %w", err))
	}
	dir, err := os.MkdirTemp(r.dir, "neighbor-")
	if err != nil {
		return fail(fmt.Errorf("neighbor store dir: %w", err))
	}
	cleanups = append(cleanups, func() { _ = os.RemoveAll(dir) })
	st, err := store.Open(ctx, "file://"+dir, store.Options{Logger: r.log})
	if err != nil {
		return fail(fmt.Errorf("neighbor store: %w", err))
	}
	cleanups = append(cleanups, func() { _ = st.Close() })

	ids := []string{"reader", "owner"}
	var members cache.StaticMembership
	var trs []*tcpfallback.Transport
	for _, id := range ids {
		tr, err := tcpfallback.New(ctx, tcpfallback.Config{NodeID: id, Listen: "127.0.0.1:0", Secret: secret, MaxInFlight: 1024, Logger: r.log})
		if err != nil {
			return fail(fmt.Errorf("transport %s: %w", id, err))
		}
		cleanups = append(cleanups, func() { _ = tr.Close() })
		trs = append(trs, tr)
		members = append(members, cache.Node{ID: id, Addr: tr.Addr()})
	}
	n := r.workingPages(size)
	stride := int64(size + cache.SlotHeaderSize)
	var tiers []*cache.NeighborTier
	var caches []*cache.Cache
	for i, tr := range trs {
		nb, err := cache.NewNeighborTier(cache.NeighborConfig{Self: ids[i], Membership: members, Transport: tr,
			PageSize: size, BlockSize: pagesPerBlock * size, Logger: r.log})
		if err != nil {
			return fail(fmt.Errorf("neighbor tier %s: %w", ids[i], err))
		}
		cleanups = append(cleanups, func() { _ = nb.Close() })
		// The owner holds about half of 2n pages (rendezvous hashing).
		c, err := cache.New(cache.Config{PageSize: size, MemBytes: int64(2*n+64)*stride + 64<<20, Logger: r.log}, st, nb)
		if err != nil {
			return fail(fmt.Errorf("cache %s: %w", ids[i], err))
		}
		cleanups = append(cleanups, func() { _ = c.Close() })
		if err := nb.Serve(c); err != nil {
			return fail(fmt.Errorf("neighbor serve %s: %w", ids[i], err))
		}
		tiers = append(tiers, nb)
		caches = append(caches, c)
	}
	// Write blocks at the owner until it owns n pages; the reader's keys
	// are the owner's pages.
	keys := make([]cache.PageKey, 0, n)
	block := make([]byte, pagesPerBlock*size)
	for b := uint64(1); len(keys) < n; b++ {
		fillPattern(block, b)
		caches[1].PutBlock(ctx, b, block, cache.AccessRandom)
		for idx := range uint32(pagesPerBlock) {
			k := cache.PageKey{Block: b, Index: idx}
			if o, _ := cache.OwnerOf(members, k); o.ID == "owner" && len(keys) < n {
				keys = append(keys, k)
			}
		}
	}
	reader := tiers[0]

	rawAddr, stopRaw, err := rawPingPongServer(size)
	if err != nil {
		return fail(err)
	}
	cleanups = append(cleanups, stopRaw)

	wls := map[string]Workload{
		TierNeighborTCP: func(_ context.Context, _ int) (Op, func(), error) {
			dst := make([]byte, size)
			return func(ctx context.Context, i int) error {
				k := keys[pick(i, len(keys))]
				got, ok, err := reader.GetSized(ctx, k, size, dst, cache.AccessRandom)
				if err != nil {
					return fmt.Errorf("neighbor get %d/%d: %w", k.Block, k.Index, err)
				}
				if !ok || got != size {
					return fmt.Errorf("neighbor get %d/%d: miss (ok %v, %d bytes; owner down?)", k.Block, k.Index, ok, got)
				}
				return nil
			}, func() {}, nil
		},
		BaseTCP: func(ctx context.Context, _ int) (Op, func(), error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", rawAddr)
			if err != nil {
				return nil, nil, fmt.Errorf("raw tcp dial: %w", err)
			}
			var req [16]byte
			binary.LittleEndian.PutUint32(req[:], uint32(size))
			buf := make([]byte, size)
			return func(context.Context, int) error {
				if _, err := c.Write(req[:]); err != nil {
					return fmt.Errorf("raw tcp write: %w", err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					return fmt.Errorf("raw tcp read: %w", err)
				}
				return nil
			}, func() { _ = c.Close() }, nil
		},
	}
	return setupResult{workloads: wls, cleanup: cleanup}, nil
}

// rawPingPongServer answers each 16-byte request (the first 4 bytes: a
// size up to maxSize) with that many bytes, on 127.0.0.1.
func rawPingPongServer(maxSize int) (addr string, stop func(), err error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("raw tcp listen: %w", err)
	}
	page := make([]byte, maxSize)
	fillPattern(page, 7)
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = struct{}{}
			mu.Unlock()
			wg.Go(func() {
				defer c.Close()
				var req [16]byte
				for {
					if _, err := io.ReadFull(c, req[:]); err != nil {
						return
					}
					n := min(int(binary.LittleEndian.Uint32(req[:])), maxSize)
					if _, err := c.Write(page[:n]); err != nil {
						return
					}
				}
			})
		}
	})
	stop = func() {
		_ = ln.Close()
		mu.Lock()
		for c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
	return ln.Addr().String(), stop, nil
}

// rdmaGroup is the neighbor tier over RDMA and its ib_read_lat baseline,
// measured through Config.RDMA where this host has an RDMA device.
func (r *runner) rdmaGroup() group {
	return group{
		tiers: []string{TierNeighborRDMA, BaseIBReadLat},
		skip: func() string {
			if !HasRDMADevice() {
				return "no RDMA device"
			}
			if r.cfg.RDMA == nil {
				return "RDMA device present but this build has no RDMA transport"
			}
			if ok, reason := r.cfg.RDMA.Available(); !ok {
				return reason
			}
			return ""
		},
		setup: func(ctx context.Context, size int) (setupResult, error) {
			tier, base, cleanup, err := r.cfg.RDMA.Setup(ctx, size)
			if err != nil {
				return setupResult{}, fmt.Errorf("rdma: %w", err)
			}
			return setupResult{workloads: map[string]Workload{TierNeighborRDMA: tier, BaseIBReadLat: base}, cleanup: cleanup}, nil
		},
	}
}

// HasRDMADevice reports whether the kernel lists an RDMA device
// (/sys/class/infiniband: mlx5, rxe, siw, ...).
func HasRDMADevice() bool {
	ents, err := os.ReadDir("/sys/class/infiniband")
	return err == nil && len(ents) > 0
}
