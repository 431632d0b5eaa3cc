// Package rdmaslot gives the cache's neighbor tier one-sided RDMA READs of
// its peers' memory arenas: Transport wraps the node transport
// (*tcpfallback.Transport, whose methods it promotes, so the neighbor tier
// keeps its request path) and implements cache.SlotReader.
//
// Control path: every exchange runs over the authenticated node RPC, so
// only a peer that proved the cluster secret gets a QP or an rkey.
//
//	OpConnect  req: the reader's rdma.Endpoint (28 bytes)
//	           resp: the owner's rdma.Endpoint of a new QP connected to it
//	OpSegment  req: segment u32
//	           resp: addr u64 | length u64 | rkey u32 | 0 u32  (24 bytes)
//
// The owner registers an arena segment (LOCAL_WRITE|REMOTE_READ) the first
// time a peer asks for it and keeps it registered until Close.
//
// Data path: ViewSlot READs the slot (header and page) into a registered
// buffer of the reader's and lends it to the neighbor tier, which checks
// key, generation and checksum there and copies the page once, into the
// caller's buffer (ReadSlot copies the whole slot out instead). QPs are per peer and reused. A READ that
// fails breaks that peer's QP: ReadSlot returns an error (the tier falls
// back to its request path over TCP for that peer) and a new QP is set up
// in the background, with back-off; until it is ready ReadSlot returns
// ErrNotConnected at once.
package rdmaslot

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/rdma"
	"github.com/datenlord/datenlord-go/tcpfallback"
)

// Op codes on the node RPC (the cache's range 0x0200-0x02ff).
const (
	OpConnect uint16 = 0x02e0
	OpSegment uint16 = 0x02e1

	segmentRespSize = 24
	minBackoff      = 100 * time.Millisecond
	maxBackoff      = 10 * time.Second
	maxQPsPerPeer   = 4
)

// ErrNotConnected is returned by ReadSlot while no QP to the peer is ready
// (being set up, or in back-off after a failure): read over TCP meanwhile.
var ErrNotConnected = errors.New("rdmaslot: no RDMA connection to the peer (yet)")

// Arena gives the owner's memory arena segments; *cache.Cache satisfies it.
type Arena interface {
	ArenaSegment(i uint32) ([]byte, bool)
}

// Config configures a Transport.
type Config struct {
	// Node is the authenticated node transport (control connection and
	// the neighbor tier's request path).
	Node *tcpfallback.Transport
	// Device is the opened RDMA device; the Transport does not close it.
	Device *rdma.Device
	// SlotBytes is the largest READ: cache.SlotHeaderSize + page size.
	SlotBytes int
	// Buffers is the number of registered READ buffers (0: 64): the
	// bound on concurrent ReadSlot calls.
	Buffers int
	// QP tunes the queue pairs.
	QP rdma.QPConfig
	// ControlTimeout bounds a control call (0: 2s).
	ControlTimeout time.Duration
	// Logger receives structured logs (nil: slog.Default()).
	Logger *slog.Logger
}

// Transport is the node transport plus one-sided slot reads.
type Transport struct {
	*tcpfallback.Transport
	cfg  Config
	log  *slog.Logger
	dev  *rdma.Device
	bufs chan int // free buffer indices
	mem  []byte
	mr   *rdma.MR
	stop chan struct{}
	wg   sync.WaitGroup

	reads    atomic.Uint64
	failures atomic.Uint64
	connects atomic.Uint64

	mu     sync.Mutex
	peers  map[string]*peer // by address, reader side
	closed bool

	srvMu sync.Mutex
	arena Arena
	segs  map[uint32]*rdma.MR   // registered arena segments
	srvQP map[string][]*rdma.QP // owner side, by authenticated peer id
}

var (
	_ cache.SlotReader = (*Transport)(nil)
	_ cache.SlotViewer = (*Transport)(nil)
)

// peer is the reader side of one owner; fields guarded by Transport.mu.
type peer struct {
	qp         *rdma.QP
	segs       map[uint32]rdma.Region
	connecting bool
	backoff    time.Duration
	retryAt    time.Time
	lastErr    error
}

// New registers the reader's buffers; call Serve to answer peers.
func New(cfg Config) (*Transport, error) {
	if cfg.Node == nil || cfg.Device == nil {
		return nil, errors.New("rdmaslot: Node and Device are required")
	}
	if cfg.SlotBytes <= cache.SlotHeaderSize {
		return nil, fmt.Errorf("rdmaslot: SlotBytes %d too small", cfg.SlotBytes)
	}
	if cfg.Buffers <= 0 {
		cfg.Buffers = 64
	}
	if cfg.ControlTimeout <= 0 {
		cfg.ControlTimeout = 2 * time.Second
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	mem, err := rdma.AllocBuffer(cfg.SlotBytes * cfg.Buffers)
	if err != nil {
		return nil, fmt.Errorf("rdmaslot: read buffers: %w", err)
	}
	mr, err := cfg.Device.Register(mem, rdma.AccessLocalWrite)
	if err != nil {
		_ = rdma.FreeBuffer(mem)
		return nil, fmt.Errorf("rdmaslot: register %d read buffers: %w", cfg.Buffers, err)
	}
	t := &Transport{
		Transport: cfg.Node, cfg: cfg, log: log.With("component", "rdmaslot"), dev: cfg.Device,
		bufs: make(chan int, cfg.Buffers), mem: mem, mr: mr, stop: make(chan struct{}),
		peers: make(map[string]*peer), segs: make(map[uint32]*rdma.MR), srvQP: make(map[string][]*rdma.QP),
	}
	for i := range cfg.Buffers {
		t.bufs <- i
	}
	return t, nil
}

// Serve answers peers' connect and segment requests from arena.
func (t *Transport) Serve(arena Arena) {
	t.srvMu.Lock()
	t.arena = arena
	t.srvMu.Unlock()
	t.Handle(OpConnect, t.handleConnect)
	t.Handle(OpSegment, t.handleSegment)
}

// handleConnect makes a QP for the authenticated peer and connects it to
// the peer's endpoint.
func (t *Transport) handleConnect(_ context.Context, peerID string, req []byte) ([]byte, error) {
	var remote rdma.Endpoint
	if err := remote.UnmarshalBinary(req); err != nil {
		return nil, fmt.Errorf("rdma connect from %s: %w", peerID, err)
	}
	qp, err := t.dev.NewQP(t.cfg.QP)
	if err != nil {
		return nil, fmt.Errorf("rdma connect from %s: %w", peerID, err)
	}
	if err := qp.Connect(remote); err != nil {
		qp.Close()
		return nil, fmt.Errorf("rdma connect from %s: %w", peerID, err)
	}
	t.srvMu.Lock()
	if t.arena == nil { // closed
		t.srvMu.Unlock()
		qp.Close()
		return nil, rdma.ErrClosed
	}
	qps := append(t.srvQP[peerID], qp)
	var old []*rdma.QP
	if len(qps) > maxQPsPerPeer { // a peer that reconnected: its old QPs are dead
		old = append(old, qps[:len(qps)-maxQPsPerPeer]...)
		qps = append([]*rdma.QP(nil), qps[len(qps)-maxQPsPerPeer:]...)
	}
	t.srvQP[peerID] = qps
	t.srvMu.Unlock()
	for _, q := range old {
		q.Close()
	}
	t.log.Info("RDMA QP for peer", "peer", peerID, "qpn", qp.Endpoint().QPN, "peer_qpn", remote.QPN, "peer_gid", remote.GID.String())
	return qp.Endpoint().MarshalBinary()
}

// handleSegment registers (once) and announces an arena segment.
func (t *Transport) handleSegment(_ context.Context, peerID string, req []byte) ([]byte, error) {
	if len(req) != 4 {
		return nil, fmt.Errorf("rdma segment request from %s: %d bytes, want 4", peerID, len(req))
	}
	i := binary.LittleEndian.Uint32(req)
	t.srvMu.Lock()
	defer t.srvMu.Unlock()
	if t.arena == nil {
		return nil, fmt.Errorf("rdma segment %d for %s: not serving", i, peerID)
	}
	mr := t.segs[i]
	if mr == nil {
		mem, ok := t.arena.ArenaSegment(i)
		if !ok {
			return nil, fmt.Errorf("rdma segment %d for %s: no such arena segment", i, peerID)
		}
		var err error
		if mr, err = t.dev.Register(mem, rdma.AccessRemoteRead); err != nil {
			return nil, fmt.Errorf("rdma segment %d for %s: %w", i, peerID, err)
		}
		t.segs[i] = mr
		t.log.Info("arena segment registered for RDMA READs", "segment", i, "bytes", len(mem))
	}
	r := mr.Region()
	b := make([]byte, segmentRespSize)
	binary.LittleEndian.PutUint64(b[0:], r.Addr)
	binary.LittleEndian.PutUint64(b[8:], r.Len)
	binary.LittleEndian.PutUint32(b[16:], r.RKey)
	return b, nil
}

// Connect sets up (or checks) the QP to the owner at addr, waiting for it.
func (t *Transport) Connect(ctx context.Context, addr string) error {
	t.mu.Lock()
	p := t.peerLocked(addr)
	if p.qp != nil {
		t.mu.Unlock()
		return nil
	}
	p.connecting = true
	t.mu.Unlock()
	return t.connect(ctx, addr, p)
}

func (t *Transport) peerLocked(addr string) *peer {
	p := t.peers[addr]
	if p == nil {
		p = &peer{segs: make(map[uint32]rdma.Region)}
		t.peers[addr] = p
	}
	return p
}

// connect makes a QP, exchanges endpoints over the control connection and
// installs it; p.connecting is set by the caller and cleared here.
func (t *Transport) connect(ctx context.Context, addr string, p *peer) error {
	err := func() error {
		qp, err := t.dev.NewQP(t.cfg.QP)
		if err != nil {
			return err
		}
		req, _ := qp.Endpoint().MarshalBinary()
		cctx, cancel := context.WithTimeout(ctx, t.cfg.ControlTimeout)
		resp, err := t.Call(cctx, addr, OpConnect, req)
		cancel()
		if err != nil {
			qp.Close()
			return fmt.Errorf("rdma connect to %s: %w", addr, err)
		}
		var remote rdma.Endpoint
		if err := remote.UnmarshalBinary(resp); err != nil {
			qp.Close()
			return fmt.Errorf("rdma connect to %s: %w", addr, err)
		}
		if err := qp.Connect(remote); err != nil {
			qp.Close()
			return fmt.Errorf("rdma connect to %s: %w", addr, err)
		}
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.closed {
			qp.Close()
			return rdma.ErrClosed
		}
		p.qp = qp
		clear(p.segs) // a restarted owner has new regions
		t.connects.Add(1)
		return nil
	}()
	t.mu.Lock()
	p.connecting = false
	if err != nil {
		p.lastErr = err
		p.backoff = min(max(2*p.backoff, minBackoff), maxBackoff)
		p.retryAt = time.Now().Add(p.backoff)
	} else {
		p.backoff, p.lastErr = 0, nil
	}
	t.mu.Unlock()
	if err != nil {
		t.log.Warn("RDMA connection to peer failed; reading over TCP", "addr", addr, "err", err)
	} else {
		t.log.Info("RDMA connection to peer ready", "addr", addr)
	}
	return err
}

// ready returns the peer's QP, starting a background (re)connect when
// there is none and none is under way (first contact: inline, bounded by
// ctx).
func (t *Transport) ready(ctx context.Context, addr string) (*rdma.QP, *peer, error) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, nil, rdma.ErrClosed
	}
	p := t.peerLocked(addr)
	if p.qp != nil {
		qp := p.qp
		t.mu.Unlock()
		return qp, p, nil
	}
	if p.connecting || time.Now().Before(p.retryAt) {
		t.mu.Unlock()
		return nil, nil, ErrNotConnected
	}
	p.connecting = true
	first := p.lastErr == nil && p.backoff == 0
	t.mu.Unlock()
	if first {
		if err := t.connect(ctx, addr, p); err != nil {
			return nil, nil, fmt.Errorf("%w: %w", ErrNotConnected, err)
		}
		return t.ready(ctx, addr)
	}
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-t.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		_ = t.connect(ctx, addr, p)
	}()
	return nil, nil, ErrNotConnected
}

// region returns the owner's region of segment i (asked once per QP).
func (t *Transport) region(ctx context.Context, addr string, p *peer, i uint32) (rdma.Region, error) {
	t.mu.Lock()
	r, ok := p.segs[i]
	t.mu.Unlock()
	if ok {
		return r, nil
	}
	var req [4]byte
	binary.LittleEndian.PutUint32(req[:], i)
	cctx, cancel := context.WithTimeout(ctx, t.cfg.ControlTimeout)
	resp, err := t.Call(cctx, addr, OpSegment, req[:])
	cancel()
	if err != nil {
		return rdma.Region{}, fmt.Errorf("rdma segment %d of %s: %w", i, addr, err)
	}
	if len(resp) != segmentRespSize || binary.LittleEndian.Uint32(resp[20:]) != 0 {
		return rdma.Region{}, fmt.Errorf("rdma segment %d of %s: malformed response of %d bytes", i, addr, len(resp))
	}
	r = rdma.Region{Addr: binary.LittleEndian.Uint64(resp[0:]), Len: binary.LittleEndian.Uint64(resp[8:]), RKey: binary.LittleEndian.Uint32(resp[16:])}
	t.mu.Lock()
	p.segs[i] = r
	t.mu.Unlock()
	return r, nil
}

// ReadSlot READs the slot at loc of the owner at addr (header and page,
// len(dst) = cache.SlotHeaderSize+loc.Length bytes) into dst. It does not
// check the slot: the neighbor tier does.
func (t *Transport) ReadSlot(ctx context.Context, addr string, loc cache.SlotLocation, dst []byte) error {
	n := cache.SlotHeaderSize + int(loc.Length)
	if len(dst) < n {
		return fmt.Errorf("rdmaslot: slot of %d bytes, buffer %d", n, len(dst))
	}
	slot, b, err := t.ViewSlot(ctx, 0, addr, loc)
	if err != nil {
		return err
	}
	copy(dst, slot)
	t.ReleaseSlot(b)
	return nil
}

// ViewSlot READs the slot at loc of the owner at addr (header and page,
// cache.SlotHeaderSize+loc.Length bytes) into one of the registered READ
// buffers and returns it: the caller checks the slot and copies the page
// out where the NIC put it, then gives the buffer back with
// ReleaseSlot(token). It does not check the slot: the neighbor tier does.
// The READ is bounded by timeout (<= 0: none) as well as ctx, without a
// derived context (no timer per READ).
func (t *Transport) ViewSlot(ctx context.Context, timeout time.Duration, addr string, loc cache.SlotLocation) ([]byte, int, error) {
	n := cache.SlotHeaderSize + int(loc.Length)
	if n > t.cfg.SlotBytes {
		return nil, 0, fmt.Errorf("rdmaslot: slot of %d bytes, limit %d", n, t.cfg.SlotBytes)
	}
	qp, p, err := t.ready(ctx, addr)
	if err != nil {
		return nil, 0, err
	}
	r, err := t.region(ctx, addr, p, loc.Segment)
	if err != nil {
		return nil, 0, err
	}
	if loc.Offset > r.Len || uint64(n) > r.Len-loc.Offset {
		return nil, 0, fmt.Errorf("rdmaslot: slot at %d+%d outside segment %d of %d bytes", loc.Offset, n, loc.Segment, r.Len)
	}
	var b int
	select {
	case b = <-t.bufs:
	case <-ctx.Done():
		return nil, 0, fmt.Errorf("rdmaslot: wait for a read buffer: %w", ctx.Err())
	}
	off := b * t.cfg.SlotBytes
	err = qp.ReadWithin(ctx, timeout, rdma.ReadOp{Local: t.mr, Offset: off, Length: n, RemoteAddr: r.Addr + loc.Offset, RKey: r.RKey})
	if err == nil {
		t.reads.Add(1)
		return t.mem[off : off+n : off+n], b, nil
	}
	t.failures.Add(1)
	if errors.Is(err, rdma.ErrQPBroken) || qp.Err() != nil {
		t.dropQP(addr, qp, err)
	}
	if !errors.Is(err, rdma.ErrNotFlushed) {
		t.bufs <- b // READ completed or flushed: the buffer is ours again
	}
	return nil, 0, fmt.Errorf("rdma READ of segment %d offset %d at %s: %w", loc.Segment, loc.Offset, addr, err)
}

// ReleaseSlot gives back the READ buffer of a ViewSlot.
func (t *Transport) ReleaseSlot(token int) { t.bufs <- token }

// dropQP forgets a broken QP; the next ReadSlot reconnects in the
// background.
func (t *Transport) dropQP(addr string, qp *rdma.QP, cause error) {
	t.mu.Lock()
	p := t.peers[addr]
	if p == nil || p.qp != qp {
		t.mu.Unlock()
		return
	}
	p.qp = nil
	p.lastErr = cause
	p.backoff = min(max(2*p.backoff, minBackoff), maxBackoff)
	p.retryAt = time.Now().Add(p.backoff)
	t.mu.Unlock()
	t.log.Warn("RDMA QP to peer broken; reading over TCP and reconnecting in the background", "addr", addr, "err", cause)
	go qp.Close()
}

// Stats counts ReadSlot outcomes.
type Stats struct {
	// Reads is the READs that completed; Failures those that did not
	// (the neighbor tier then read over TCP).
	Reads, Failures uint64
	// Connects is the QPs set up to peers (reader side): one per peer,
	// plus one per reconnection after a QP broke.
	Connects uint64
}

// Stats returns the counts so far.
func (t *Transport) Stats() Stats {
	return Stats{Reads: t.reads.Load(), Failures: t.failures.Load(), Connects: t.connects.Load()}
}

// Connected reports whether a QP to addr is ready.
func (t *Transport) Connected(addr string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.peers[addr]
	return p != nil && p.qp != nil
}

// Close destroys every QP and deregisters every region (the node
// transport and the device stay open: they are the caller's).
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	var qps []*rdma.QP
	for _, p := range t.peers {
		if p.qp != nil {
			qps = append(qps, p.qp)
			p.qp = nil
		}
	}
	t.mu.Unlock()
	close(t.stop)
	t.wg.Wait()
	t.srvMu.Lock()
	t.arena = nil
	for _, q := range t.srvQP {
		qps = append(qps, q...)
	}
	clear(t.srvQP)
	segs := t.segs
	t.segs = map[uint32]*rdma.MR{}
	t.srvMu.Unlock()
	var errs []error
	for _, q := range qps {
		errs = append(errs, q.Close())
	}
	for _, mr := range segs {
		errs = append(errs, mr.Close())
	}
	errs = append(errs, t.mr.Close(), rdma.FreeBuffer(t.mem))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("rdmaslot: close: %w", err)
	}
	return nil
}
