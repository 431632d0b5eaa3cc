package tiers

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/internal/pingpong"
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
	if r.cfg.Remote != nil {
		return r.remoteNeighborSetup(ctx, size)
	}
	pair, err := r.startPair(ctx, size, nil)
	if err != nil {
		return setupResult{}, err
	}
	rawAddr, stopRaw, err := pingpong.Serve(size)
	if err != nil {
		pair.cleanup()
		return setupResult{}, err
	}
	pair.cleanups = append(pair.cleanups, stopRaw)
	wls := map[string]Workload{
		TierNeighborTCP: pair.workload(size, nil),
		BaseTCP:         rawPingPong(rawAddr, size),
	}
	return setupResult{workloads: wls, cleanup: pair.cleanup}, nil
}

// rawPingPong is the raw TCP ping-pong baseline against the pingpong
// server at addr: a 16-byte request, a size-byte response.
func rawPingPong(addr string, size int) Workload {
	return func(ctx context.Context, _ int) (Op, func(), error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("raw tcp dial %s: %w", addr, err)
		}
		var req [pingpong.RequestSize]byte
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
	}
}

// nodePair is two in-process cache nodes: the reader's neighbor tier and
// the keys of pages the owner holds in memory.
type nodePair struct {
	reader   *cache.NeighborTier
	keys     []cache.PageKey
	rdma     []RDMANode // reader, owner; nil over TCP
	cleanups []func()
}

// cleanup releases everything, last made first.
func (p *nodePair) cleanup() {
	for i := len(p.cleanups) - 1; i >= 0; i-- {
		p.cleanups[i]()
	}
	p.cleanups = nil
}

// startPair starts the reader and the owner; with hook, each node's
// transport gets one-sided slot reads (hook.Attach) as in production.
func (r *runner) startPair(ctx context.Context, size int, hook RDMAHook) (*nodePair, error) {
	p := &nodePair{}
	fail := func(err error) (*nodePair, error) { p.cleanup(); return nil, err }

	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		return fail(fmt.Errorf("cluster secret: %w", err))
	}
	dir, err := os.MkdirTemp(r.dir, "neighbor-")
	if err != nil {
		return fail(fmt.Errorf("neighbor store dir: %w", err))
	}
	p.cleanups = append(p.cleanups, func() { _ = os.RemoveAll(dir) })
	st, err := store.Open(ctx, "file://"+dir, store.Options{Logger: r.log})
	if err != nil {
		return fail(fmt.Errorf("neighbor store: %w", err))
	}
	p.cleanups = append(p.cleanups, func() { _ = st.Close() })

	ids := []string{"reader", "owner"}
	var members cache.StaticMembership
	var trs []*tcpfallback.Transport
	for _, id := range ids {
		tr, err := tcpfallback.New(ctx, tcpfallback.Config{NodeID: id, Listen: "127.0.0.1:0", Secret: secret, MaxInFlight: 1024, Logger: r.log})
		if err != nil {
			return fail(fmt.Errorf("transport %s: %w", id, err))
		}
		p.cleanups = append(p.cleanups, func() { _ = tr.Close() })
		trs = append(trs, tr)
		members = append(members, cache.Node{ID: id, Addr: tr.Addr()})
	}
	n := r.workingPages(size)
	stride := int64(size + cache.SlotHeaderSize)
	var caches []*cache.Cache
	for i, tr := range trs {
		var transport cache.NeighborTransport = tr
		name := "tcp"
		var rn RDMANode
		if hook != nil {
			if rn, err = hook.Attach(ctx, tr, size); err != nil {
				return fail(fmt.Errorf("rdma for %s: %w", ids[i], err))
			}
			p.cleanups = append(p.cleanups, func() { _ = rn.Close() }) // on failure below
			p.rdma = append(p.rdma, rn)
			transport, name = rn.Transport(), "rdma"
		}
		nb, err := cache.NewNeighborTier(cache.NeighborConfig{Self: ids[i], Membership: members, Transport: transport, TransportName: name,
			PageSize: size, BlockSize: pagesPerBlock * size, Logger: r.log})
		if err != nil {
			return fail(fmt.Errorf("neighbor tier %s: %w", ids[i], err))
		}
		p.cleanups = append(p.cleanups, func() { _ = nb.Close() })
		// The owner holds about half of 2n pages (rendezvous hashing).
		c, err := cache.New(cache.Config{PageSize: size, MemBytes: int64(2*n+64)*stride + 64<<20, Logger: r.log}, st, nb)
		if err != nil {
			return fail(fmt.Errorf("cache %s: %w", ids[i], err))
		}
		p.cleanups = append(p.cleanups, func() { _ = c.Close() })
		if rn != nil {
			// QPs and registrations of the arena go before the arena.
			p.cleanups = append(p.cleanups, func() { _ = rn.Close() })
		}
		if err := nb.Serve(c); err != nil {
			return fail(fmt.Errorf("neighbor serve %s: %w", ids[i], err))
		}
		if rn != nil {
			rn.Serve(c)
		}
		if i == 0 {
			p.reader = nb
		}
		caches = append(caches, c)
	}
	// Write blocks at the owner until it owns n pages; the reader's keys
	// are the owner's pages.
	p.keys = make([]cache.PageKey, 0, n)
	block := make([]byte, pagesPerBlock*size)
	for b := uint64(1); len(p.keys) < n; b++ {
		fillPattern(block, b)
		caches[1].PutBlock(ctx, b, block, cache.AccessRandom)
		for idx := range uint32(pagesPerBlock) {
			k := cache.PageKey{Block: b, Index: idx}
			if o, _ := cache.OwnerOf(members, k); o.ID == "owner" && len(p.keys) < n {
				p.keys = append(p.keys, k)
			}
		}
	}
	if err := p.firstRead(ctx, size); err != nil {
		return fail(err)
	}
	return p, nil
}

// firstReadWindow bounds the reader's first read of the owner's.
const firstReadWindow = 20 * time.Second

// firstRead reads one page until it succeeds: the first call dials and
// authenticates, which on a slow host (an emulator) can outlast the
// tier's call timeout; the tier then marks the owner down until its probe
// finds it back.
func (p *nodePair) firstRead(ctx context.Context, size int) error {
	dst := make([]byte, size)
	k := p.keys[0]
	deadline := time.Now().Add(firstReadWindow)
	for {
		got, ok, err := p.reader.GetSized(ctx, k, size, dst, cache.AccessRandom)
		if err == nil && ok && got == size {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("first read of %d/%d from the owner: no page after %v (ok %v, %d bytes, err %v)", k.Block, k.Index, firstReadWindow, ok, got, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("first read from the owner: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// workload reads random keys of the owner's through the reader's
// neighbor tier; check, when set, runs after each read with the reader's
// RDMA READ counts (completed, failed) from before it: the RDMA row checks
// that the page came by RDMA READ.
func (p *nodePair) workload(size int, check func(before [2]uint64) error) Workload {
	return func(_ context.Context, _ int) (Op, func(), error) {
		dst := make([]byte, size)
		return func(ctx context.Context, i int) error {
			var before [2]uint64
			if check != nil {
				before[0], before[1] = p.rdma[0].Reads()
			}
			k := p.keys[pick(i, len(p.keys))]
			got, ok, err := p.reader.GetSized(ctx, k, size, dst, cache.AccessRandom)
			if err != nil {
				return fmt.Errorf("neighbor get %d/%d: %w", k.Block, k.Index, err)
			}
			if !ok || got != size {
				return fmt.Errorf("neighbor get %d/%d: miss (ok %v, %d bytes; owner down?)", k.Block, k.Index, ok, got)
			}
			if check != nil {
				if err := check(before); err != nil {
					return fmt.Errorf("neighbor get %d/%d: %w", k.Block, k.Index, err)
				}
			}
			return nil
		}, func() {}, nil
	}
}

// rdmaGroup is the neighbor tier over RDMA and its ib_read_lat baseline,
// measured through Config.RDMA where this host has an RDMA device.
func (r *runner) rdmaGroup() group {
	return group{
		tiers: []string{TierNeighborRDMA, BaseIBReadLat, BaseRDMARead},
		skip: func() string {
			if r.cfg.RDMA == nil {
				if !HasRDMADevice() {
					return "no RDMA device"
				}
				return "RDMA device present but this build has no RDMA transport"
			}
			if ok, reason := r.cfg.RDMA.Available(); !ok {
				return reason
			}
			return ""
		},
		setup: r.rdmaSetup,
	}
}

// rdmaSetup starts the node pair with one-sided reads, reads every key
// (the reader learns each page's slot location, connects its QP and
// learns the owner's arena regions: the steady state of a running node),
// and measures ib_read_lat and the rdma package's bare READ through the
// hook.
func (r *runner) rdmaSetup(ctx context.Context, size int) (setupResult, error) {
	if r.cfg.Remote != nil {
		return r.remoteRDMASetup(ctx, size)
	}
	hook := r.cfg.RDMA
	pair, err := r.startPair(ctx, size, hook)
	if err != nil {
		return setupResult{}, fmt.Errorf("rdma: %w", err)
	}
	return r.rdmaRows(ctx, pair, size, "")
}

// rdmaRows warms pair's reader up until its reads go by RDMA READ alone
// and returns the RDMA rows on it; baseNote, when set, is added to the
// ib_read_lat row's note.
func (r *runner) rdmaRows(ctx context.Context, pair *nodePair, size int, baseNote string) (setupResult, error) {
	hook := r.cfg.RDMA
	// Passes over the keys until one is served by RDMA READs alone (a
	// slow first contact can leave the slot path in back-off for a while,
	// the pages coming over TCP meanwhile).
	dst := make([]byte, size)
	deadline := time.Now().Add(firstReadWindow)
	for pass := 1; ; pass++ {
		ok0, failed0 := pair.rdma[0].Reads()
		for _, k := range pair.keys {
			got, ok, err := pair.reader.GetSized(ctx, k, size, dst, cache.AccessRandom)
			if err != nil || !ok || got != size {
				pair.cleanup()
				return setupResult{}, fmt.Errorf("rdma: read %d/%d: ok %v, %d bytes, err %v", k.Block, k.Index, ok, got, err)
			}
		}
		ok1, failed1 := pair.rdma[0].Reads()
		if ok1-ok0 == uint64(len(pair.keys)) && failed1 == failed0 {
			break
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			pair.cleanup()
			return setupResult{}, fmt.Errorf("rdma: %d passes over %d pages in %v: the last had %d RDMA READs, %d failed (the rest came over TCP)",
				pass, len(pair.keys), firstReadWindow, ok1-ok0, failed1-failed0)
		}
		time.Sleep(100 * time.Millisecond)
	}
	viaRDMA := func(before [2]uint64) error {
		ok, failed := pair.rdma[0].Reads()
		if failed != before[1] {
			return fmt.Errorf("%d RDMA READs failed (the page came over TCP)", failed-before[1])
		}
		if ok == before[0] {
			return errors.New("the page was not read by RDMA READ")
		}
		return nil
	}
	raw, rawCleanup, err := hook.RawRead(ctx, size)
	if err != nil {
		pair.cleanup()
		return setupResult{}, fmt.Errorf("rdma: %s: %w", BaseRDMARead, err)
	}
	pair.cleanups = append(pair.cleanups, rawCleanup)
	b := Bounds{Duration: r.cfg.Duration, Iterations: r.cfg.Iterations, MinSamples: r.cfg.MinSamples}
	return setupResult{
		workloads: map[string]Workload{TierNeighborRDMA: pair.workload(size, viaRDMA), BaseRDMARead: raw},
		external: map[string]func(context.Context, *Row) error{
			BaseIBReadLat: func(ctx context.Context, row *Row) error {
				m, err := hook.Baseline(ctx, size, b)
				if err != nil {
					var sk *skipError
					if errors.As(err, &sk) {
						return err
					}
					return fmt.Errorf("bench tiers: %s %s: %w", BaseIBReadLat, sizeName(size), err)
				}
				if baseNote != "" {
					m.Note += "; " + baseNote
				}
				row.setMeasurement(m)
				return nil
			},
		},
		cleanup: pair.cleanup,
	}, nil
}

// HasRDMADevice reports whether the kernel lists an RDMA device
// (/sys/class/infiniband: mlx5, rxe, siw, ...).
func HasRDMADevice() bool {
	ents, err := os.ReadDir("/sys/class/infiniband")
	return err == nil && len(ents) > 0
}
