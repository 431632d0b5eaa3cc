// Package rdmabench implements bench/tiers' RDMAHook: the neighbor/rdma
// row (the node's production read path: rdmaslot over the node transport,
// one-sided RDMA READs of the owner's arena slots) and its ib_read_lat
// baseline (perftest, server and client on the same device, in the same
// run).
//
// It builds with and without cgo: without cgo (or libibverbs) rdma.Open
// fails with rdma.ErrNoRDMA and Available says "no RDMA in this build".
package rdmabench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/datenlord/datenlord-go/bench/tiers"
	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/rdma"
	"github.com/datenlord/datenlord-go/rdma/rdmaslot"
	"github.com/datenlord/datenlord-go/tcpfallback"
)

// Config configures a Hook.
type Config struct {
	// Device is the RDMA device name ("": the first).
	Device string
	// IBReadLat is the ib_read_lat binary ("": looked up in PATH).
	IBReadLat string
	// Logger receives structured logs (nil: slog.Default()).
	Logger *slog.Logger
}

// Hook measures the RDMA rows of bench tiers; it implements
// tiers.RDMAHook.
type Hook struct {
	cfg Config
	log *slog.Logger
}

var _ tiers.RDMAHook = (*Hook)(nil)

// New returns a Hook.
func New(cfg Config) *Hook {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Hook{cfg: cfg, log: log.With("component", "rdmabench")}
}

// loopback is the address the in-process nodes and ib_read_lat use.
func loopback() net.IP { return net.IPv4(127, 0, 0, 1).To4() }

// openDevice opens the device with the IPv4-mapped GID of ip (RoCE v2
// routes by it; on soft-RoCE bound to lo, 127.0.0.1 is the one that
// works), or, when the device has no GID for ip (a NIC), its first
// IPv4-mapped GID.
func (h *Hook) openDevice(ip net.IP) (*rdma.Device, error) {
	dev, err := rdma.Open(rdma.Config{Device: h.cfg.Device, IP: ip})
	if err == nil || rdma.Unavailable(err) {
		return dev, err
	}
	dev, err2 := rdma.Open(rdma.Config{Device: h.cfg.Device})
	if err2 != nil {
		return nil, fmt.Errorf("%w (and without it: %w)", err, err2)
	}
	return dev, nil
}

// Available opens the device once to tell whether the rows can be
// measured here.
func (h *Hook) Available() (bool, string) {
	dev, err := h.openDevice(loopback())
	switch {
	case errors.Is(err, rdma.ErrNoRDMA):
		return false, "no RDMA in this build (built without cgo/libibverbs)"
	case errors.Is(err, rdma.ErrNoDevice):
		return false, "no RDMA device"
	case err != nil:
		return false, fmt.Sprintf("RDMA device unusable: %v", err)
	}
	_ = dev.Close()
	return true, ""
}

// Attach opens the device for one in-process node and wraps its transport
// in an rdmaslot.Transport, as `serve` does (cmd/datenlord-node
// openNeighborRDMA): the GID of the node's address (see openDevice), the default QP
// configuration, slot buffers of SlotHeaderSize+pageSize bytes.
func (h *Hook) Attach(_ context.Context, node *tcpfallback.Transport, pageSize int) (tiers.RDMANode, error) {
	ip := loopback()
	if host, _, err := net.SplitHostPort(node.Addr()); err == nil {
		if a := net.ParseIP(host); a != nil && a.To4() != nil && !a.IsUnspecified() {
			ip = a
		}
	}
	dev, err := h.openDevice(ip)
	if err != nil {
		return nil, fmt.Errorf("rdmabench: open device: %w", err)
	}
	slots, err := rdmaslot.New(rdmaslot.Config{Node: node, Device: dev, SlotBytes: cache.SlotHeaderSize + pageSize, Logger: h.log})
	if err != nil {
		_ = dev.Close()
		return nil, fmt.Errorf("rdmabench: %w", err)
	}
	return &rdmaNode{dev: dev, slots: slots}, nil
}

// rdmaNode is one node's device and slot transport.
type rdmaNode struct {
	dev   *rdma.Device
	slots *rdmaslot.Transport
	once  sync.Once
	err   error
}

// Transport returns the slot transport (a cache.SlotReader).
func (n *rdmaNode) Transport() cache.NeighborTransport { return n.slots }

// Serve answers peers' connect and segment requests from c's arena.
func (n *rdmaNode) Serve(c *cache.Cache) { n.slots.Serve(c) }

// Reads returns the completed and failed one-sided READs.
func (n *rdmaNode) Reads() (ok, failed uint64) {
	st := n.slots.Stats()
	return st.Reads, st.Failures
}

// Close destroys the QPs and registrations, then closes the device; a
// second call returns the first's result.
func (n *rdmaNode) Close() error {
	n.once.Do(func() { n.err = errors.Join(n.slots.Close(), n.dev.Close()) })
	return n.err
}

// cacheSlotHeader is the slot header the tier READs with every page.
const cacheSlotHeader = cache.SlotHeaderSize

// RawRead returns READs of what the tier READs (slot header and page)
// through the rdma package, on a QP pair of its own on the device: the
// verbs layer (cgo post, CQ polling, completion hand-off) without the
// tier. Each worker READs into its own registered buffer; all share one
// QP, as the tier's readers share the QP to a peer.
func (h *Hook) RawRead(_ context.Context, pageSize int) (tiers.Workload, func(), error) {
	n := cacheSlotHeader + pageSize
	dev, err := h.openDevice(loopback())
	if err != nil {
		return nil, nil, fmt.Errorf("rdmabench: open device: %w", err)
	}
	var closers []func() error
	cleanup := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			_ = closers[i]()
		}
	}
	closers = append(closers, dev.Close)
	fail := func(err error) (tiers.Workload, func(), error) {
		cleanup()
		return nil, nil, fmt.Errorf("rdmabench: raw READ: %w", err)
	}
	mem, err := rdma.AllocBuffer(n)
	if err != nil {
		return fail(err)
	}
	fillBytes(mem)
	closers = append(closers, func() error { return rdma.FreeBuffer(mem) })
	remote, err := dev.Register(mem, rdma.AccessRemoteRead)
	if err != nil {
		return fail(err)
	}
	closers = append(closers, remote.Close)
	var qps [2]*rdma.QP
	for i := range qps {
		if qps[i], err = dev.NewQP(rdma.QPConfig{}); err != nil {
			return fail(err)
		}
		closers = append(closers, qps[i].Close)
	}
	if err := qps[0].Connect(qps[1].Endpoint()); err != nil {
		return fail(err)
	}
	if err := qps[1].Connect(qps[0].Endpoint()); err != nil {
		return fail(err)
	}
	rr := remote.Region()
	wl := func(_ context.Context, _ int) (tiers.Op, func(), error) {
		buf, err := rdma.AllocBuffer(n)
		if err != nil {
			return nil, nil, fmt.Errorf("rdmabench: raw READ buffer: %w", err)
		}
		local, err := dev.Register(buf, rdma.AccessLocalWrite)
		if err != nil {
			_ = rdma.FreeBuffer(buf)
			return nil, nil, fmt.Errorf("rdmabench: raw READ buffer: %w", err)
		}
		op := func(ctx context.Context, _ int) error {
			if err := qps[0].Read(ctx, rdma.ReadOp{Local: local, Length: n, RemoteAddr: rr.Addr, RKey: rr.RKey}); err != nil {
				return fmt.Errorf("raw RDMA READ of %d bytes: %w", n, err)
			}
			return nil
		}
		return op, func() { _ = local.Close(); _ = rdma.FreeBuffer(buf) }, nil
	}
	return wl, cleanup, nil
}

// fillBytes writes a non-constant pattern.
func fillBytes(b []byte) {
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
}
