package tiers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/internal/pingpong"
	"github.com/datenlord/datenlord-go/tcpfallback"
)

// Node RPC ops that let `bench tiers --addr` measure a running node (the
// bench range 0x0300-0x030f). Like every node RPC they are served only to
// peers that proved the cluster secret.
const (
	// OpSample answers with the node's id, page and block size and the
	// keys of pages it holds in memory.
	OpSample uint16 = 0x0300
	// OpPingPong starts (or stops) the raw TCP ping-pong baseline server
	// on the node.
	OpPingPong uint16 = 0x0301
)

// Bounds of what a node does for a remote bench.
const (
	maxSamplePages      = 1 << 16
	maxPingPongSize     = 8 << 20
	maxPingPongLife     = 10 * time.Minute
	maxPingPongAlive    = 4
	defaultPingPongLife = 5 * time.Minute
)

// sampleRequest asks for up to Max pages.
type sampleRequest struct {
	Max int `json:"max"`
}

// sampleResponse describes the node and pages it holds in memory.
type sampleResponse struct {
	NodeID    string      `json:"node_id"`
	PageSize  int         `json:"page_size"`
	BlockSize int         `json:"block_size"`
	Pages     [][2]uint64 `json:"pages"` // block, index
}

// pingPongRequest starts a ping-pong server answering up to MaxSize
// bytes for at most LifeSeconds, or, with Stop, stops the one at Stop.
type pingPongRequest struct {
	MaxSize     int    `json:"max_size,omitempty"`
	LifeSeconds int    `json:"life_s,omitempty"`
	Stop        string `json:"stop,omitempty"`
}

type pingPongResponse struct {
	Addr string `json:"addr,omitempty"`
}

// pingPongServer is a ping-pong baseline server a NodeOps started: its
// stop function and the timer that ends its lifetime.
type pingPongServer struct {
	stop func()
	life *time.Timer
}

// NodeOps serves the remote bench ops on a running node. Close stops the
// ping-pong servers it started.
type NodeOps struct {
	c         *cache.Cache
	nodeID    string
	host      string
	blockSize int
	log       *slog.Logger

	mu      sync.Mutex
	closed  bool
	servers map[string]pingPongServer // by address
}

// ServeNodeOps registers OpSample and OpPingPong on tr, answering from c
// (the node's cache; blockSize its block size). The ping-pong servers
// listen on the host of listen (the node's --listen address: every
// address when it names none), where a bench that reached the node can
// reach them.
func ServeNodeOps(tr *tcpfallback.Transport, c *cache.Cache, nodeID string, blockSize int, listen string, log *slog.Logger) *NodeOps {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		host = ""
	}
	o := &NodeOps{c: c, nodeID: nodeID, host: host, blockSize: blockSize, log: log,
		servers: map[string]pingPongServer{}}
	tr.Handle(OpSample, o.sample)
	tr.Handle(OpPingPong, o.pingPong)
	return o
}

func (o *NodeOps) sample(_ context.Context, _ string, req []byte) ([]byte, error) {
	var r sampleRequest
	if err := json.Unmarshal(req, &r); err != nil {
		return nil, fmt.Errorf("bench sample request: %w", err)
	}
	if r.Max <= 0 || r.Max > maxSamplePages {
		r.Max = maxSamplePages
	}
	keys := o.c.MemoryPages(r.Max)
	resp := sampleResponse{NodeID: o.nodeID, PageSize: o.c.PageSize(), BlockSize: o.blockSize, Pages: make([][2]uint64, len(keys))}
	for i, k := range keys {
		resp.Pages[i] = [2]uint64{k.Block, uint64(k.Index)}
	}
	return json.Marshal(resp)
}

func (o *NodeOps) pingPong(_ context.Context, peer string, req []byte) ([]byte, error) {
	var r pingPongRequest
	if err := json.Unmarshal(req, &r); err != nil {
		return nil, fmt.Errorf("bench ping-pong request: %w", err)
	}
	if r.Stop != "" {
		o.stop(r.Stop)
		return json.Marshal(pingPongResponse{})
	}
	if r.MaxSize <= 0 || r.MaxSize > maxPingPongSize {
		return nil, fmt.Errorf("bench ping-pong: size %d: want 1..%d", r.MaxSize, maxPingPongSize)
	}
	life := time.Duration(r.LifeSeconds) * time.Second
	if life <= 0 {
		life = defaultPingPongLife
	}
	life = min(life, maxPingPongLife)
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil, errors.New("bench ping-pong: node shutting down")
	}
	if len(o.servers) >= maxPingPongAlive {
		return nil, fmt.Errorf("bench ping-pong: %d servers already running (a bench is in progress)", len(o.servers))
	}
	addr, stop, err := pingpong.ServeOn(o.host, r.MaxSize)
	if err != nil {
		return nil, fmt.Errorf("bench ping-pong: %w", err)
	}
	o.servers[addr] = pingPongServer{stop: stop, life: time.AfterFunc(life, func() { o.stop(addr) })}
	o.log.Info("bench ping-pong baseline server started", "addr", addr, "peer", peer, "size", r.MaxSize, "life", life)
	return json.Marshal(pingPongResponse{Addr: addr})
}

// stop stops the ping-pong server at addr, if running.
func (o *NodeOps) stop(addr string) {
	o.mu.Lock()
	srv, ok := o.servers[addr]
	if ok {
		srv.life.Stop()
		delete(o.servers, addr)
	}
	o.mu.Unlock()
	if ok {
		srv.stop()
		o.log.Info("bench ping-pong baseline server stopped", "addr", addr)
	}
}

// Close stops every ping-pong server; later starts fail.
func (o *NodeOps) Close() {
	o.mu.Lock()
	o.closed = true
	addrs := make([]string, 0, len(o.servers))
	for a := range o.servers {
		addrs = append(addrs, a)
	}
	o.mu.Unlock()
	for _, a := range addrs {
		o.stop(a)
	}
}

// Remote points the neighbor rows at a running node rather than at an
// in-process pair: the bench reads pages that node holds in memory,
// through a read-only neighbor tier (cache.NeighborConfig.ReadOnly) on
// Transport, and the baseline is a raw TCP ping-pong with a server the
// node starts on its own host (OpPingPong).
type Remote struct {
	// Addr is the node's address (its --listen).
	Addr string
	// Transport is a client transport holding the cluster secret.
	Transport *tcpfallback.Transport
}

// remoteTarget is what OpSample told about the node.
type remoteTarget struct {
	sampleResponse
	keys []cache.PageKey
}

// sampleRemote asks the node for up to max pages.
func sampleRemote(ctx context.Context, rm *Remote, max int) (*remoteTarget, error) {
	req, err := json.Marshal(sampleRequest{Max: max})
	if err != nil {
		return nil, err
	}
	resp, err := rm.Transport.Call(ctx, rm.Addr, OpSample, req)
	if err != nil {
		return nil, fmt.Errorf("ask %s for its cached pages: %w", rm.Addr, err)
	}
	var t remoteTarget
	if err := json.Unmarshal(resp, &t.sampleResponse); err != nil {
		return nil, fmt.Errorf("ask %s for its cached pages: bad answer: %w", rm.Addr, err)
	}
	if t.NodeID == "" || t.PageSize <= 0 || t.BlockSize < t.PageSize {
		return nil, fmt.Errorf("ask %s for its cached pages: bad answer (node %q, page size %d, block size %d)", rm.Addr, t.NodeID, t.PageSize, t.BlockSize)
	}
	t.keys = make([]cache.PageKey, len(t.Pages))
	for i, p := range t.Pages {
		t.keys[i] = cache.PageKey{Block: p[0], Index: uint32(p[1])}
	}
	return &t, nil
}

// minRemotePages is the fewest pages a node must hold for a remote row.
const minRemotePages = 8

// remoteNeighborSetup is neighborSetup against Config.Remote: rows of a
// size other than the node's page size are skipped (a running node has
// one page size).
func (r *runner) remoteNeighborSetup(ctx context.Context, size int) (setupResult, error) {
	rm := r.cfg.Remote
	tg, err := r.remoteTarget(ctx, size)
	if err != nil {
		return setupResult{}, err
	}
	p, err := r.remoteReader(ctx, tg, rm.Transport, "tcp")
	if err != nil {
		return setupResult{}, err
	}
	fail := func(err error) (setupResult, error) { p.cleanup(); return setupResult{}, err }
	ppReq, err := json.Marshal(pingPongRequest{MaxSize: size, LifeSeconds: int(defaultPingPongLife / time.Second)})
	if err != nil {
		return fail(err)
	}
	resp, err := rm.Transport.Call(ctx, rm.Addr, OpPingPong, ppReq)
	if err != nil {
		return fail(fmt.Errorf("start the ping-pong baseline on %s: %w", rm.Addr, err))
	}
	var pp pingPongResponse
	if err := json.Unmarshal(resp, &pp); err != nil || pp.Addr == "" {
		return fail(fmt.Errorf("start the ping-pong baseline on %s: bad answer %q (%v)", rm.Addr, resp, err))
	}
	// The server listens where the node does: dial it at the host the
	// node was reached at.
	rawAddr, err := sameHost(rm.Addr, pp.Addr)
	if err != nil {
		return fail(fmt.Errorf("start the ping-pong baseline on %s: %w", rm.Addr, err))
	}
	p.cleanups = append(p.cleanups, func() {
		req, _ := json.Marshal(pingPongRequest{Stop: pp.Addr})
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := rm.Transport.Call(ctx, rm.Addr, OpPingPong, req); err != nil {
			r.log.Warn("stop the ping-pong baseline on the node (it stops itself later)", "node", rm.Addr, "addr", pp.Addr, "err", err)
		}
	})
	return setupResult{
		workloads: map[string]Workload{TierNeighborTCP: p.workload(size, nil), BaseTCP: rawPingPong(rawAddr, size)},
		cleanup:   p.cleanup,
	}, nil
}

// sameHost is the host of node with the port of server.
func sameHost(node, server string) (string, error) {
	host, _, err := net.SplitHostPort(node)
	if err != nil {
		return "", fmt.Errorf("node address %q: %w", node, err)
	}
	_, port, err := net.SplitHostPort(server)
	if err != nil {
		return "", fmt.Errorf("server address %q: %w", server, err)
	}
	return net.JoinHostPort(host, port), nil
}

// remoteTarget samples Config.Remote's pages for a row of size: a skip
// when the node's pages have another size, an error when it holds too
// few.
func (r *runner) remoteTarget(ctx context.Context, size int) (*remoteTarget, error) {
	rm := r.cfg.Remote
	want := max(minRemotePages, int(r.cfg.WorkingSet/int64(size)))
	tg, err := sampleRemote(ctx, rm, want)
	if err != nil {
		return nil, err
	}
	if size != tg.PageSize {
		return nil, Skip(fmt.Sprintf("node %s at %s has %s pages", tg.NodeID, rm.Addr, sizeName(tg.PageSize)))
	}
	if len(tg.keys) < minRemotePages {
		return nil, fmt.Errorf("node %s at %s holds %d pages in memory, fewer than %d: load some data first (datenlord-node cache warmup PATH --addr %s)",
			tg.NodeID, rm.Addr, len(tg.keys), minRemotePages, rm.Addr)
	}
	return tg, nil
}

// remoteReader is a read-only neighbor tier over tr whose only member is
// the remote node, with that node's pages as its keys, after one read
// went through.
func (r *runner) remoteReader(ctx context.Context, tg *remoteTarget, tr cache.NeighborTransport, name string) (*nodePair, error) {
	p := &nodePair{keys: tg.keys}
	host, _ := os.Hostname()
	self := fmt.Sprintf("bench-%s-%d", host, os.Getpid())
	nb, err := cache.NewNeighborTier(cache.NeighborConfig{Self: self, ReadOnly: true,
		Membership: cache.StaticMembership{{ID: tg.NodeID, Addr: r.cfg.Remote.Addr}}, Transport: tr, TransportName: name,
		PageSize: tg.PageSize, BlockSize: tg.BlockSize, Logger: r.log})
	if err != nil {
		return nil, fmt.Errorf("neighbor reader: %w", err)
	}
	p.cleanups = append(p.cleanups, func() { _ = nb.Close() })
	p.reader = nb
	if err := p.firstRead(ctx, tg.PageSize); err != nil {
		p.cleanup()
		return nil, err
	}
	return p, nil
}

// remoteRDMASetup is rdmaSetup against Config.Remote: the reader's
// client transport gets one-sided slot reads (Config.RDMA.Attach) and
// reads the node's arena; the node must run with RDMA (--transport auto
// or rdma on a host with a device). The baselines run on this host's
// device (ib_read_lat and the rdma package between two QPs of it), the
// closest this host can measure without a perftest server on the node.
func (r *runner) remoteRDMASetup(ctx context.Context, size int) (setupResult, error) {
	tg, err := r.remoteTarget(ctx, size)
	if err != nil {
		return setupResult{}, err
	}
	rn, err := r.cfg.RDMA.Attach(ctx, r.cfg.Remote.Transport, size)
	if err != nil {
		return setupResult{}, fmt.Errorf("rdma: %w", err)
	}
	p, err := r.remoteReader(ctx, tg, rn.Transport(), "rdma")
	if err != nil {
		_ = rn.Close()
		return setupResult{}, fmt.Errorf("rdma: %w", err)
	}
	p.rdma = []RDMANode{rn}
	p.cleanups = append(p.cleanups, func() { _ = rn.Close() })
	return r.rdmaRows(ctx, p, size, "the tier row read node "+tg.NodeID+" at "+r.cfg.Remote.Addr)
}
