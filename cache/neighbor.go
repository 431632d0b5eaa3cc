package cache

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/prometheus/client_golang/prometheus"
)

// # Neighbor tier
//
// The neighbor tier makes the memory of every cache node one cluster-wide
// page cache. Each page has an owner, chosen by rendezvous
// (highest-random-weight) hashing of the page key over the live cache
// nodes: every node computes the same owner without coordination, and a
// node joining or leaving moves only its share of the pages.
//
// Reader side (NeighborTier.GetSized, called by Cache.ReadPage after the
// local memory and disk tiers miss): a page owned by another node is read
// from that owner (opReadPage); the owner serves it from its memory arena
// after checking the slot header (key, length, generation) and sends the
// slot's CRC-32C with it, and the reader checks that CRC on arrival, so
// corruption anywhere on the way, the owner's arena included, is a miss,
// never wrong bytes. (Over tcpfallback the owner answers inline from its
// connection reader, sending the page from its pinned arena slot with no
// copy and no rehash, and the transport skips its frame CRC over the page:
// the reader's check is the end-to-end one, one CRC pass per page read,
// taken by the transport chunk by chunk as the bytes land in the caller's
// buffer.) A page this node owns is not sent over the
// network. A failed call (refused, lost connection, timeout after
// NeighborConfig.CallTimeout) marks the peer down and is a miss: the
// reader falls back to persistence, and later pages go to the next owner
// by HRW until a background probe (opPing, with back-off) finds the peer
// again. No neighbor failure reaches the application.
//
// Owner side (Serve): an owner that misses fills the page from persistence
// once (its own Cache.ReadPage, single flight). A sequential miss instead
// fills the whole block, once for the cluster, at the block's coordinator
// (the HRW winner for the block): one ranged GET per block, after which
// the coordinator offers every page of the block to its owner. Pages this
// node writes (Cache.PutBlock) or fetches from persistence are offered to
// their owners asynchronously through a bounded queue that drops when
// full: a file written on one node is hot for the others.
//
// While other cache nodes are live, the neighbor tier claims every page
// in Contains, so the local readahead of Cache.Prefetch does not GET from
// the store what the cluster already holds or fills block-wise.
//
// Transport: NeighborTransport carries the requests (tcpfallback's
// *Transport satisfies it as is). A transport that also implements
// SlotReader (RDMA) gets one-sided reads: the reader keeps the location
// hints (segment, offset, generation) owners return and reads the slot
// directly, checking key, generation and checksum; a stale hint costs one
// opReadPage, never wrong data.

// Node is one cache node: its id (as authenticated by the transport) and
// the address its transport listens on.
type Node struct {
	ID   string
	Addr string
}

// Membership tells the neighbor tier which nodes take part in the cluster
// cache. Implementations are safe for concurrent use.
type Membership interface {
	// Nodes returns the current cache nodes, this one included; callers
	// do not modify the slice. Liveness is the neighbor tier's business.
	Nodes() []Node
}

// StaticMembership is a fixed Membership (tests, static deployments).
type StaticMembership []Node

// Nodes returns the fixed node list.
func (s StaticMembership) Nodes() []Node { return s }

// NeighborHandler serves one neighbor request from the authenticated peer
// with node id peer; req is valid only during the call.
type NeighborHandler = func(ctx context.Context, peer string, req []byte) ([]byte, error)

// NeighborTransport carries the neighbor tier's requests between nodes.
// It must authenticate peers before delivering any request to a handler.
// *tcpfallback.Transport satisfies it.
type NeighborTransport interface {
	// CallInto sends req as op to the node at addr and returns its
	// response, read into resp when it fits; it honours ctx's deadline.
	CallInto(ctx context.Context, addr string, op uint16, req, resp []byte) ([]byte, error)
	// Handle registers the handler of op (each op once).
	Handle(op uint16, h NeighborHandler)
}

// neighborFastTransport is implemented by transports (tcpfallback) that
// can serve a request inline on the connection's reader, into a buffer
// they own, and read a response whose payload the caller checks itself
// straight into the caller's buffers. The neighbor tier uses it for
// opReadPage: the page carries its slot's CRC-32C, which the reader
// verifies against the bytes it received, so the transport need not hash
// the page a second time, and a page read costs no allocation, no
// goroutine hand-off at the owner and no copy at the reader.
type neighborFastTransport interface {
	// HandleInlineSend registers op with a non-blocking fast path run
	// on the connection's reader: its response is head (built in dst of
	// at least scratch bytes) then body, memory the fast path pinned,
	// sent uncopied; release(token) follows the write. ok false defers
	// to h.
	HandleInlineSend(op uint16, scratch int, fast func(peer string, req, dst []byte) (head, body []byte, token uint64, ok bool), release func(token uint64), h NeighborHandler)
	// CallIntoSplitTimeout reads the response payload into head, then
	// body; it returns the payload length n and bodySum, the CRC-32C of
	// the bytes it read into body (body[:n-len(head)]), computed as they
	// arrived. The payload is not covered by the transport's own
	// checksum: the caller verifies it (against bodySum). The call is
	// bounded by timeout as well as ctx, without a derived context (no
	// allocation per call).
	CallIntoSplitTimeout(ctx context.Context, timeout time.Duration, addr string, op uint16, req, head, body []byte) (n int, bodySum uint32, err error)
}

// SlotLocation is where a page lives in its owner's memory arena, for
// one-sided reads: arena segment, byte offset of the slot (header first)
// in the segment, the slot's generation and the page length.
type SlotLocation struct {
	Segment    uint32
	Offset     uint64
	Generation uint64
	Length     uint32
}

// SlotReader is implemented by transports with one-sided reads (RDMA).
type SlotReader interface {
	// ReadSlot reads the slot at loc in the arena of the node at addr
	// (header and page: SlotHeaderSize+loc.Length bytes) into dst.
	ReadSlot(ctx context.Context, addr string, loc SlotLocation, dst []byte) error
}

// SlotViewer is implemented by slot readers that can lend the memory a
// slot was read into (RDMA: the registered READ buffer). The neighbor
// tier then checks the slot where it landed and copies the page once,
// into the caller's buffer, instead of copying the slot out of the READ
// buffer first.
type SlotViewer interface {
	// ViewSlot reads the slot at loc (header and page:
	// SlotHeaderSize+loc.Length bytes) in the arena of the node at addr
	// and returns those bytes, valid and unchanged until
	// ReleaseSlot(token); on error there is nothing to release. The
	// read is bounded by timeout as well as ctx, without a derived
	// context (no timer, no allocation per read).
	ViewSlot(ctx context.Context, timeout time.Duration, addr string, loc SlotLocation) (slot []byte, token int, err error)
	// ReleaseSlot gives the memory of a ViewSlot back.
	ReleaseSlot(token int)
}

// SlotHeaderSize is the size of a slot header in the memory arena (see
// memory.go for the layout).
const SlotHeaderSize = slotHeaderSize

// NeighborConfig configures a NeighborTier.
type NeighborConfig struct {
	// Self is this node's id; it must appear in Membership.Nodes()
	// unless ReadOnly.
	Self string
	// ReadOnly makes a reader that owns no pages and serves none: Self
	// takes no part in rendezvous hashing, so every page is read from
	// the Membership's nodes (a client such as `bench tiers --addr`, not
	// a cache node). A read-only tier must not Serve.
	ReadOnly bool
	// Membership lists the cache nodes.
	Membership Membership
	// Transport carries requests; TransportName names it in logs ("tcp"
	// when empty). datenlord_neighbor_reads_total is labelled by the path
	// each page took instead: "rdma" (one-sided, SlotReader) or "tcp".
	Transport     NeighborTransport
	TransportName string
	// PageSize must equal the Cache's page size.
	PageSize int
	// BlockSize is the largest block (the format-time block size): a
	// block fill reads up to this much.
	BlockSize int
	// CallTimeout bounds one request to a peer (0: 1s): what a dead
	// owner costs a reader before it falls back to persistence.
	CallTimeout time.Duration
	// FillTimeout bounds an owner's fill from persistence (0: 30s).
	FillTimeout time.Duration
	// OfferQueue bounds pages waiting to be offered to their owners
	// (0: 256); further offers are dropped.
	OfferQueue int
	// Registerer receives the neighbor metrics (nil: none).
	Registerer prometheus.Registerer
	// Logger receives structured logs (nil: slog.Default()).
	Logger *slog.Logger
}

// Probe back-off of a peer marked down.
const (
	minProbeBackoff = 100 * time.Millisecond
	maxProbeBackoff = 10 * time.Second
	probeInterval   = 50 * time.Millisecond
	maxHints        = 1 << 16
	offerWorkers    = 2
)

// NeighborTier is the neighbor cache tier (Tier name "neighbor"). Create
// it with NewNeighborTier, pass it to New as an extra tier after the disk
// tier, then call Serve with the Cache to answer peers.
type NeighborTier struct {
	cfg   NeighborConfig
	log   *slog.Logger
	tr    NeighborTransport
	fast  neighborFastTransport // nil: plain CallInto and Handle
	slots SlotReader            // nil: no one-sided reads
	view  SlotViewer            // nil: slots copies into our buffer
	crc   *crc32.Table
	m     *neighborMetrics
	bufs  sync.Pool // *[]byte of max(respHeaderSize, slotHeaderSize)+PageSize

	mu    sync.Mutex
	peers map[string]*peerState
	hints map[PageKey]SlotLocation
	cache *Cache // set by Serve
	// serving is cache, for the inline handler (no lock on its path).
	serving atomic.Pointer[Cache]
	closed  bool

	fillMu sync.Mutex
	fills  map[uint64]*blockFill

	offers chan offer
	// congested is set when a writer's wait for offer queue room timed
	// out, cleared when the queue drains to half (PutWait).
	congested atomic.Bool
	stop      chan struct{}
	wg        sync.WaitGroup
}

// peerState is the liveness of one peer; guarded by NeighborTier.mu.
type peerState struct {
	down    bool
	retryAt time.Time
	backoff time.Duration
	probing bool
	// slotRetryAt: no lookups for one-sided reads before then.
	slotRetryAt time.Time
}

// offer is one page waiting to be sent to its owner.
type offer struct {
	to   Node
	key  PageKey
	data *[]byte
	n    int
}

var (
	_ Tier        = (*NeighborTier)(nil)
	_ sizedGetter = (*NeighborTier)(nil)
	_ pageHolder  = (*NeighborTier)(nil)
)

// NewNeighborTier returns the neighbor tier and starts its offer workers
// and liveness prober; Close stops them.
func NewNeighborTier(cfg NeighborConfig) (*NeighborTier, error) {
	switch {
	case cfg.Self == "":
		return nil, errors.New("cache neighbor: Self is required")
	case cfg.Membership == nil:
		return nil, errors.New("cache neighbor: Membership is required")
	case cfg.Transport == nil:
		return nil, errors.New("cache neighbor: Transport is required")
	case cfg.PageSize <= 0 || cfg.PageSize%4096 != 0:
		return nil, fmt.Errorf("cache neighbor: page size %d is not a positive multiple of 4096", cfg.PageSize)
	case cfg.BlockSize < cfg.PageSize || cfg.BlockSize%cfg.PageSize != 0:
		return nil, fmt.Errorf("cache neighbor: block size %d is not a multiple of the page size %d", cfg.BlockSize, cfg.PageSize)
	}
	if cfg.TransportName == "" {
		cfg.TransportName = "tcp"
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = time.Second
	}
	if cfg.FillTimeout <= 0 {
		cfg.FillTimeout = 30 * time.Second
	}
	if cfg.OfferQueue <= 0 {
		cfg.OfferQueue = 256
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	m, err := newNeighborMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("cache neighbor: register metrics: %w", err)
	}
	n := &NeighborTier{
		cfg:    cfg,
		log:    log.With("tier", "neighbor", "node", cfg.Self, "transport", cfg.TransportName),
		tr:     cfg.Transport,
		crc:    crc32.MakeTable(crc32.Castagnoli),
		m:      m,
		peers:  make(map[string]*peerState),
		hints:  make(map[PageKey]SlotLocation),
		fills:  make(map[uint64]*blockFill),
		offers: make(chan offer, cfg.OfferQueue),
		stop:   make(chan struct{}),
	}
	n.slots, _ = cfg.Transport.(SlotReader)
	n.view, _ = cfg.Transport.(SlotViewer)
	n.fast, _ = cfg.Transport.(neighborFastTransport)
	size := max(respHeaderSize, slotHeaderSize) + cfg.PageSize // a response, or a slot read one-sidedly
	n.bufs.New = func() any { b := make([]byte, size); return &b }
	for range offerWorkers {
		n.wg.Add(1)
		go n.offerLoop()
	}
	n.wg.Add(1)
	go n.probeLoop()
	return n, nil
}

// Name returns "neighbor".
func (n *NeighborTier) Name() string { return "neighbor" }

// servingKey marks the ctx of a request served for a peer: the serving
// node's own neighbor tier then neither forwards nor offers, so that two
// nodes with different membership views never bounce a request between
// them.
type servingKey struct{}

func serving(ctx context.Context) bool { return ctx.Value(servingKey{}) != nil }

func servingCtx(ctx context.Context) context.Context {
	return context.WithValue(ctx, servingKey{}, true)
}

// liveNodes returns the members not marked down (this node always).
func (n *NeighborTier) liveNodes() []Node {
	nodes := n.cfg.Membership.Nodes()
	n.mu.Lock()
	defer n.mu.Unlock()
	live := make([]Node, 0, len(nodes))
	for _, nd := range nodes {
		if nd.ID == n.cfg.Self {
			if !n.cfg.ReadOnly {
				live = append(live, nd)
			}
			continue
		}
		if p := n.peers[nd.ID]; p != nil && p.down {
			continue
		}
		live = append(live, nd)
	}
	return live
}

// liveOwners is hrwOwner of key (and, with block, of its block's
// coordinator key) over liveNodes, without building that list: the read
// path allocates nothing. clustered is false when no other node is live.
func (n *NeighborTier) liveOwners(key PageKey, block bool) (owner, coord Node, clustered bool) {
	nodes := n.cfg.Membership.Nodes()
	bkey := blockKey(key.Block)
	var ow, cw uint64
	live := 0
	n.mu.Lock()
	defer n.mu.Unlock()
	for _, nd := range nodes {
		if nd.ID != n.cfg.Self {
			if p := n.peers[nd.ID]; p != nil && p.down {
				continue
			}
		} else if n.cfg.ReadOnly {
			continue
		}
		live++
		// Same order and tie-break as hrwOwner.
		if w := hrwWeight(nd.ID, key); live == 1 || w > ow || (w == ow && nd.ID < owner.ID) {
			owner, ow = nd, w
		}
		if block {
			if w := hrwWeight(nd.ID, bkey); live == 1 || w > cw || (w == cw && nd.ID < coord.ID) {
				coord, cw = nd, w
			}
		}
	}
	return owner, coord, live > 1 || (n.cfg.ReadOnly && live > 0)
}

// mix64 is the splitmix64 finaliser: a cheap, well-distributed 64-bit mix.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// hrwWeight is the rendezvous weight of node id for key; every node
// computes the same weights, so they agree on owners without talking.
func hrwWeight(id string, key PageKey) uint64 {
	return mix64(xxhash.Sum64String(id) ^ mix64(key.Block^mix64(uint64(key.Index)+0x9e3779b97f4a7c15)))
}

// hrwOwner returns the node of highest weight for key (ties: lower id).
func hrwOwner(nodes []Node, key PageKey) (Node, bool) {
	var best Node
	var bestW uint64
	found := false
	for _, nd := range nodes {
		w := hrwWeight(nd.ID, key)
		if !found || w > bestW || (w == bestW && nd.ID < best.ID) {
			best, bestW, found = nd, w, true
		}
	}
	return best, found
}

// OwnerOf returns the owner of key among the given nodes by rendezvous
// hashing (what every node computes); ok is false for no nodes.
func OwnerOf(nodes []Node, key PageKey) (Node, bool) { return hrwOwner(nodes, key) }

// blockKey is the key whose owner coordinates fills of a whole block.
func blockKey(block uint64) PageKey { return PageKey{Block: block, Index: math.MaxUint32} }

// clustered reports whether other live cache nodes exist (for a
// read-only tier, whether any does: live never lists Self then).
func (n *NeighborTier) clustered(live []Node) bool {
	return len(live) > 1 || (n.cfg.ReadOnly && len(live) > 0)
}

// Contains claims every page while other cache nodes are live: the
// cluster, not local readahead, decides what is fetched from the store
// (block-wise at the block's coordinator). It does no I/O.
func (n *NeighborTier) Contains(PageKey) bool {
	return n.clustered(n.liveNodes())
}

// Get serves a page without knowing its length: only a page held by its
// owner can be returned (the owner cannot fill from persistence without
// the length). Cache.ReadPage calls GetSized instead.
func (n *NeighborTier) Get(ctx context.Context, key PageKey, dst []byte) (int, bool, error) {
	return n.GetSized(ctx, key, 0, dst, AccessRandom)
}

// GetSized reads a page from its owner (length 0: only if cached there).
// Any neighbor failure is a miss (err nil): the caller falls back to
// persistence.
func (n *NeighborTier) GetSized(ctx context.Context, key PageKey, length int, dst []byte, access Access) (int, bool, error) {
	if serving(ctx) || length > n.cfg.PageSize {
		return 0, false, nil
	}
	owner, coord, clustered := n.liveOwners(key, access == AccessSequential)
	if !clustered {
		return 0, false, nil
	}
	if owner.ID != n.cfg.Self {
		flags := uint8(0)
		if access == AccessSequential {
			flags |= readSequential
		}
		got, ok := n.readRemote(ctx, owner, key, length, dst, flags)
		return got, ok, nil
	}
	if access != AccessSequential || length == 0 {
		return 0, false, nil // our own page: our own single-flight fetch follows
	}
	// A sequential miss of a page we own still fills the whole block,
	// once for the cluster, at the block's coordinator.
	if coord.ID == n.cfg.Self {
		if _, _, err := n.fillBlock(ctx, key.Block, key.Index, true); err != nil {
			n.log.Debug("block fill failed; the page is read alone", "block", key.Block, "err", err)
		}
		return 0, false, nil // the page is in memory now: Cache.fetch finds it
	}
	got, ok := n.readRemote(ctx, coord, key, length, dst, readSequential|readCoordinate)
	return got, ok, nil // Cache.ReadPage caches a hit in the local tiers
}

// readRemote asks node for a page and checks what comes back.
//
// With a SlotReader the page is read one-sidedly: at its cached location,
// or, with none (or a stale one), at the location an opLookup returns; the
// request path carries the page itself only when the one-sided path fails
// or the owner cannot place the page in its arena.
func (n *NeighborTier) readRemote(ctx context.Context, node Node, key PageKey, length int, dst []byte, flags uint8) (int, bool) {
	if n.slots != nil && length > 0 {
		switch got, res := n.readSlot(ctx, node, key, length, dst); res {
		case slotRead:
			return got, true
		case slotNoLocation:
			if n.slotPathUp(node.ID) {
				loc, found, ok := n.lookup(ctx, node, key, length, flags)
				if !ok {
					return 0, false // the owner did not answer: a miss, as for opReadPage
				}
				if found {
					n.setHint(key, loc)
					if got, res := n.readSlot(ctx, node, key, length, dst); res == slotRead {
						return got, true
					}
				}
			}
		}
	}
	bp := n.bufs.Get().(*[]byte)
	defer n.bufs.Put(bp)
	start := time.Now()
	var r readResp
	var err error
	// summed: sum is the CRC-32C of r.data, taken by the transport as
	// the bytes arrived.
	var sum uint32
	summed := false
	if n.fast != nil && len(dst) >= n.cfg.PageSize {
		// The page goes straight from the socket into dst, unhashed by
		// the transport: the slot CRC below is the end-to-end check. The
		// request and the response header share the pooled buffer (a
		// request array on the stack would escape: one allocation per
		// read).
		head := (*bp)[:respHeaderSize]
		req := (*bp)[respHeaderSize : respHeaderSize+readReqSize]
		encodeReadReq(req, readReq{key: key, length: uint32(length), flags: flags})
		var total int
		total, sum, err = n.fast.CallIntoSplitTimeout(ctx, n.cfg.CallTimeout, node.Addr, opReadPage, req, head, dst[:n.cfg.PageSize])
		if err != nil {
			n.callFailed(ctx, node, err)
			return 0, false
		}
		r, err = decodeReadRespHead(head, total, n.cfg.PageSize)
		if err == nil && r.status == statusOK {
			r.data = dst[:r.length] // exactly the bytes sum covers: total == respHeaderSize+r.length
			summed = true
		}
	} else {
		var req [readReqSize]byte
		encodeReadReq(req[:], readReq{key: key, length: uint32(length), flags: flags})
		cctx, cancel := context.WithTimeout(ctx, n.cfg.CallTimeout)
		var resp []byte
		resp, err = n.tr.CallInto(cctx, node.Addr, opReadPage, req[:], *bp)
		cancel()
		if err != nil {
			n.callFailed(ctx, node, err)
			return 0, false
		}
		r, err = decodeReadResp(resp, n.cfg.PageSize)
	}
	n.m.duration.WithLabelValues(node.ID).Observe(time.Since(start).Seconds())
	if err == nil && r.status == statusOK {
		if length > 0 && int(r.length) != length {
			err = fmt.Errorf("owner sent %d bytes, the block map says %d", r.length, length)
		} else {
			if !summed {
				sum = crc32.Checksum(r.data, n.crc)
			}
			if sum != r.crc {
				err = errors.New("page checksum mismatch")
			}
		}
	}
	if err != nil {
		n.m.bad.Inc()
		n.log.Warn("bad page from neighbor; reading it elsewhere", "peer", node.ID, "block", key.Block, "page", key.Index, "err", err)
		return 0, false
	}
	if r.status != statusOK {
		return 0, false
	}
	if len(dst) < len(r.data) {
		return 0, false
	}
	if r.hasLoc {
		n.setHint(key, r.loc)
	}
	n.m.readsTCP.Inc()
	if len(r.data) > 0 && &r.data[0] == &dst[0] {
		return len(r.data), true // read in place
	}
	return copy(dst, r.data), true
}

// slotResult is the outcome of a one-sided read attempt.
type slotResult int

const (
	// slotRead: the page was read and checked.
	slotRead slotResult = iota
	// slotNoLocation: no (or a stale) location: a lookup may find it.
	slotNoLocation
	// slotFailed: the one-sided path failed: read over the request path.
	slotFailed
)

// slotRetryDelay is how long a reader whose one-sided read of a peer
// failed reads that peer over the request path alone (no lookups), while
// the slot reader reconnects in the background.
const slotRetryDelay = time.Second

// readSlot reads a page with a one-sided read at its cached location.
func (n *NeighborTier) readSlot(ctx context.Context, node Node, key PageKey, length int, dst []byte) (int, slotResult) {
	n.mu.Lock()
	loc, ok := n.hints[key]
	n.mu.Unlock()
	if !ok || int(loc.Length) != length {
		return 0, slotNoLocation
	}
	var got int
	var err error
	if n.view != nil {
		// The slot is checked where the READ put it and the page copied
		// once, into dst.
		var slot []byte
		var token int
		slot, token, err = n.view.ViewSlot(ctx, n.cfg.CallTimeout, node.Addr, loc)
		if err == nil {
			if err = checkSlot(slot, key, loc, n.crc); err == nil {
				got = copy(dst, slot[slotHeaderSize:])
			}
			n.view.ReleaseSlot(token)
			if err != nil {
				n.dropHint(key) // evicted or rewritten: one more lookup, never wrong data
				return 0, slotNoLocation
			}
		}
	} else {
		bp := n.bufs.Get().(*[]byte)
		defer n.bufs.Put(bp)
		buf := (*bp)[:slotHeaderSize+length]
		cctx, cancel := context.WithTimeout(ctx, n.cfg.CallTimeout)
		err = n.slots.ReadSlot(cctx, node.Addr, loc, buf)
		cancel()
		if err == nil {
			if err := checkSlot(buf, key, loc, n.crc); err != nil {
				n.dropHint(key) // evicted or rewritten: one more lookup, never wrong data
				return 0, slotNoLocation
			}
			got = copy(dst, buf[slotHeaderSize:])
		}
	}
	if err != nil {
		// Not a verdict on the peer: the request path follows at once
		// (over TCP) and judges its liveness; the slot reader reconnects
		// its one-sided path in the background. Meanwhile no lookups:
		// their locations could not be read.
		n.log.Debug("one-sided read failed; reading over the request path", "peer", node.ID, "err", err)
		n.slotFailed(node.ID)
		return 0, slotFailed
	}
	n.m.readsRDMA.Inc()
	return got, slotRead
}

// lookup asks node where the page's slot is (opLookup; the owner fills
// on a miss). ok false: the call failed (the peer is marked down); found
// false: the owner has no slot for the page.
func (n *NeighborTier) lookup(ctx context.Context, node Node, key PageKey, length int, flags uint8) (loc SlotLocation, found, ok bool) {
	var req [readReqSize]byte
	encodeReadReq(req[:], readReq{key: key, length: uint32(length), flags: flags})
	var resp [respHeaderSize]byte
	cctx, cancel := context.WithTimeout(ctx, n.cfg.CallTimeout)
	b, err := n.tr.CallInto(cctx, node.Addr, opLookup, req[:], resp[:])
	cancel()
	if err != nil {
		n.callFailed(ctx, node, err)
		return SlotLocation{}, false, false
	}
	r, err := decodeLookupResp(b, n.cfg.PageSize)
	if err == nil && r.status == statusOK && int(r.length) != length {
		err = fmt.Errorf("owner located %d bytes, the block map says %d", r.length, length)
	}
	if err != nil {
		n.m.bad.Inc()
		n.log.Warn("bad lookup response from neighbor; reading the page over the request path", "peer", node.ID, "block", key.Block, "page", key.Index, "err", err)
		return SlotLocation{}, false, true
	}
	return r.loc, r.status == statusOK, true
}

// slotPathUp reports whether lookups for one-sided reads of peer are on
// (not within slotRetryDelay of a failed one-sided read).
func (n *NeighborTier) slotPathUp(peer string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	p := n.peers[peer]
	return p == nil || !time.Now().Before(p.slotRetryAt)
}

func (n *NeighborTier) slotFailed(peer string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	p := n.peers[peer]
	if p == nil {
		p = &peerState{}
		n.peers[peer] = p
	}
	p.slotRetryAt = time.Now().Add(slotRetryDelay)
}

// callFailed marks node down after a failed call, unless our own caller
// gave up.
func (n *NeighborTier) callFailed(ctx context.Context, node Node, err error) {
	if ctx.Err() != nil {
		return
	}
	n.m.failures.WithLabelValues(node.ID).Inc()
	n.mu.Lock()
	p := n.peers[node.ID]
	if p == nil {
		p = &peerState{}
		n.peers[node.ID] = p
	}
	wasDown := p.down
	if !p.down {
		p.down = true
		p.backoff = minProbeBackoff
		p.retryAt = time.Now().Add(p.backoff)
	}
	n.mu.Unlock()
	if !wasDown {
		n.log.Warn("neighbor marked down; its pages go to the next owner or the store", "peer", node.ID, "addr", node.Addr, "err", err)
	}
}

func (n *NeighborTier) setHint(key PageKey, loc SlotLocation) {
	n.mu.Lock()
	if len(n.hints) >= maxHints {
		clear(n.hints) // hints are only hints: start over rather than track age
	}
	n.hints[key] = loc
	n.mu.Unlock()
}

func (n *NeighborTier) dropHint(key PageKey) {
	n.mu.Lock()
	delete(n.hints, key)
	n.mu.Unlock()
}

// Hint returns the cached location of a page at its owner, if any.
func (n *NeighborTier) Hint(key PageKey) (SlotLocation, bool) {
	n.mu.Lock()
	defer n.mu.Unlock()
	loc, ok := n.hints[key]
	return loc, ok
}

// Put offers a page to its owner asynchronously (a bounded queue that
// drops when full). Pages this node owns, pages of a request served for a
// peer and pages of a down owner are not sent.
func (n *NeighborTier) Put(ctx context.Context, key PageKey, data []byte, _ Access) error {
	if owner, ok := n.offerTo(ctx, key, data); ok {
		n.enqueue(owner, key, data)
	}
	return nil
}

// PutWait is Put for the write path (Cache.PutBlock): when the offer
// queue is full it waits for room until ctx ends, rather than dropping
// the page, so that a fast writer leaves every page it wrote at its
// owner (a dropped offer costs the cluster a store GET later).
func (n *NeighborTier) PutWait(ctx context.Context, key PageKey, data []byte, _ Access) error {
	owner, ok := n.offerTo(ctx, key, data)
	switch {
	case !ok:
	case n.congested.Load():
		// The last wait timed out (an owner slow or unreachable): drop
		// rather than stall the writer again, until the queue drains.
		n.enqueue(owner, key, data)
	case !n.enqueueWait(owner, key, data, ctx.Done(), maxOfferQueueWait):
		n.congested.Store(true)
	}
	return nil
}

// offerTo returns the owner a page offered to this tier goes to; ok is
// false when it goes nowhere: a read-only tier, a request served for a
// peer, an empty or oversized page, no other live node, or our own page.
func (n *NeighborTier) offerTo(ctx context.Context, key PageKey, data []byte) (owner Node, ok bool) {
	if serving(ctx) || n.cfg.ReadOnly || len(data) == 0 || len(data) > n.cfg.PageSize {
		return Node{}, false
	}
	live := n.liveNodes()
	if !n.clustered(live) {
		return Node{}, false
	}
	owner, _ = hrwOwner(live, key)
	return owner, owner.ID != n.cfg.Self
}

// maxOfferQueueWait bounds how long PutWait waits for room in the offer
// queue; after a wait that timed out the writer does not wait again until
// the queue has drained to half (offerLoop clears congested).
const maxOfferQueueWait = 200 * time.Millisecond

// OwnedHere reports whether this node is where page key belongs: it owns
// it, or no other cache node is live. A read-only tier owns nothing.
func (n *NeighborTier) OwnedHere(key PageKey) bool {
	live := n.liveNodes()
	if !n.clustered(live) {
		return !n.cfg.ReadOnly
	}
	owner, _ := hrwOwner(live, key)
	return owner.ID == n.cfg.Self
}

// enqueue queues a copy of a page for its owner, or drops it when the
// queue is full.
func (n *NeighborTier) enqueue(to Node, key PageKey, data []byte) {
	n.enqueueWait(to, key, data, nil, 0)
}

// enqueueWait is enqueue that, when the queue is full, waits up to wait
// for room (or until done is closed) before it drops the page. It reports
// whether the page was queued (a closed tier counts as queued: there is
// nothing to wait for).
func (n *NeighborTier) enqueueWait(to Node, key PageKey, data []byte, done <-chan struct{}, wait time.Duration) bool {
	n.mu.Lock()
	closed := n.closed
	n.mu.Unlock()
	if closed {
		return true
	}
	bp := n.bufs.Get().(*[]byte)
	copied := copy((*bp)[putReqSize:], data)
	o := offer{to: to, key: key, data: bp, n: copied}
	select {
	case n.offers <- o:
		return true
	default:
	}
	if wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case n.offers <- o:
			return true
		case <-t.C:
		case <-done:
		case <-n.stop:
		}
	}
	n.bufs.Put(bp)
	n.m.offersDropped.Inc()
	return false
}

func (n *NeighborTier) offerLoop() {
	defer n.wg.Done()
	for {
		select {
		case <-n.stop:
			return
		case o := <-n.offers:
			n.sendOffer(o)
			if n.congested.Load() && len(n.offers) < cap(n.offers)/2 {
				n.congested.Store(false)
			}
		}
	}
}

// sendOffer sends a queued page to its owner (opPutPage).
func (n *NeighborTier) sendOffer(o offer) {
	defer n.bufs.Put(o.data)
	buf := (*o.data)[:putReqSize+o.n]
	encodePutReq(buf, o.key, crc32.Checksum(buf[putReqSize:], n.crc), o.n)
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.CallTimeout)
	defer cancel()
	go func() { // Close interrupts a send in progress
		select {
		case <-n.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	if _, err := n.tr.CallInto(ctx, o.to.Addr, opPutPage, buf, nil); err != nil {
		n.callFailed(ctx, o.to, err)
		return
	}
	n.m.offersSent.Inc()
}

// probeLoop pings peers marked down, with back-off, and marks them up
// again when they answer.
func (n *NeighborTier) probeLoop() {
	defer n.wg.Done()
	t := time.NewTicker(probeInterval)
	defer t.Stop()
	for {
		select {
		case <-n.stop:
			return
		case <-t.C:
		}
		now := time.Now()
		var due []Node
		nodes := n.cfg.Membership.Nodes()
		n.mu.Lock()
		for _, nd := range nodes {
			if p := n.peers[nd.ID]; p != nil && p.down && !p.probing && now.After(p.retryAt) {
				p.probing = true
				due = append(due, nd)
			}
		}
		n.mu.Unlock()
		for _, nd := range due {
			n.wg.Add(1)
			go n.probe(nd)
		}
	}
}

func (n *NeighborTier) probe(nd Node) {
	defer n.wg.Done()
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.CallTimeout)
	_, err := n.tr.CallInto(ctx, nd.Addr, opPing, nil, nil)
	cancel()
	n.mu.Lock()
	defer n.mu.Unlock()
	p := n.peers[nd.ID]
	if p == nil {
		return
	}
	p.probing = false
	if err == nil {
		p.down = false
		p.backoff = 0
		n.log.Info("neighbor is back", "peer", nd.ID, "addr", nd.Addr)
		return
	}
	p.backoff = min(2*p.backoff, maxProbeBackoff)
	p.retryAt = time.Now().Add(p.backoff)
}

// PeerDown reports whether the tier currently treats peer id as down.
func (n *NeighborTier) PeerDown(id string) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	p := n.peers[id]
	return p != nil && p.down
}

// DropBlock forgets the location hints of a block; owners drop their own
// copies when their garbage collector reaches them.
func (n *NeighborTier) DropBlock(_ context.Context, block uint64) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for k := range n.hints {
		if k.Block == block {
			delete(n.hints, k)
		}
	}
}

// Close stops the offer workers and the prober; queued offers are
// dropped. Handlers stay registered on the transport (they answer misses
// once the Cache is closed).
func (n *NeighborTier) Close() error {
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		return nil
	}
	n.closed = true
	n.mu.Unlock()
	close(n.stop)
	n.wg.Wait()
	return nil
}

// sizedGetter is a Tier that needs the page's length and the access
// pattern to serve a miss (the neighbor tier: its owner fills from
// persistence, block-wise for sequential readers).
type sizedGetter interface {
	GetSized(ctx context.Context, key PageKey, length int, dst []byte, access Access) (int, bool, error)
}

// getPage asks a tier for a page, with its length when the tier wants it.
func getPage(ctx context.Context, t Tier, key PageKey, length int, dst []byte, access Access) (int, bool, error) {
	if sg, ok := t.(sizedGetter); ok {
		return sg.GetSized(ctx, key, length, dst, access)
	}
	return t.Get(ctx, key, dst)
}

// neighborMetrics are the neighbor tier's own collectors (hits and misses
// are the Cache's datenlord_cache_hits_total{tier="neighbor"}).
type neighborMetrics struct {
	readsRDMA     prometheus.Counter // reads{transport="rdma"}: one-sided slot reads
	readsTCP      prometheus.Counter // reads{transport="tcp"}: pages over the request path
	duration      *prometheus.HistogramVec
	failures      *prometheus.CounterVec
	bad           prometheus.Counter
	offersSent    prometheus.Counter
	offersDropped prometheus.Counter
	served        *prometheus.CounterVec
	servedMemory  prometheus.Counter // served{source="memory"}
}

func newNeighborMetrics(reg prometheus.Registerer) (*neighborMetrics, error) {
	reads := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "datenlord_neighbor_reads_total", Help: "Pages read from a neighbor, by the path the bytes took (rdma: one-sided slot read, tcp: the request path).",
	}, []string{"transport"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "datenlord_neighbor_request_duration_seconds",
		Help:    "Latency of successful page requests to a neighbor, by peer.",
		Buckets: prometheus.ExponentialBuckets(20e-6, 2, 16),
	}, []string{"peer"})
	failures := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "datenlord_neighbor_failures_total", Help: "Failed requests to a neighbor (the peer is then marked down), by peer.",
	}, []string{"peer"})
	bad := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "datenlord_neighbor_bad_responses_total", Help: "Malformed or corrupt page responses from neighbors (treated as misses).",
	})
	offers := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "datenlord_neighbor_offers_total", Help: "Pages offered to their owners, by result (sent, dropped).",
	}, []string{"result"})
	served := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "datenlord_neighbor_served_total", Help: "Page requests served for peers, by source (memory, fill).",
	}, []string{"source"})
	if reg != nil {
		var err error
		if reads, err = register(reg, reads); err != nil {
			return nil, err
		}
		if duration, err = register(reg, duration); err != nil {
			return nil, err
		}
		if failures, err = register(reg, failures); err != nil {
			return nil, err
		}
		if bad, err = register(reg, bad); err != nil {
			return nil, err
		}
		if offers, err = register(reg, offers); err != nil {
			return nil, err
		}
		if served, err = register(reg, served); err != nil {
			return nil, err
		}
	}
	return &neighborMetrics{
		readsRDMA:     reads.WithLabelValues("rdma"),
		readsTCP:      reads.WithLabelValues("tcp"),
		duration:      duration,
		failures:      failures,
		bad:           bad,
		offersSent:    offers.WithLabelValues("sent"),
		offersDropped: offers.WithLabelValues("dropped"),
		served:        served,
		servedMemory:  served.WithLabelValues("memory"),
	}, nil
}

// sortedIDs returns the ids of nodes, sorted (for stable output).
func sortedIDs(nodes []Node) []string {
	ids := make([]string, len(nodes))
	for i, nd := range nodes {
		ids[i] = nd.ID
	}
	slices.Sort(ids)
	return ids
}

// PageSize returns the page size the tier was configured with.
func (n *NeighborTier) PageSize() int { return n.cfg.PageSize }
