// Package tcpfallback is the node-to-node transport over TCP: an
// authenticated, framed, multiplexed RPC (metadata forwarding, cluster
// membership, page locations and, without RDMA, page data) and raw
// authenticated streams (the Raft transport) on one listening port.
//
// It moves bytes and knows nothing of files, inodes or cache policy: the
// packages that serve requests register handlers by op code.
//
// # Connection set-up
//
// Every connection starts with a handshake, bounded in size (a hello is at
// most 200 bytes) and in time (Config.DialTimeout), with at most a fixed
// number of handshakes pending at once:
//
//	client -> server  hello     "DLNK" | version u8 | kind len u8 | id len u8 | 0 u8 | client nonce [32] | kind | client node id
//	server -> client  challenge "DLNK" | version u8 | 0 0 0 | server nonce [32]
//	client -> server  proof     HMAC-SHA256(secret, "...client proof", sn, cn, client id, "", kind, 0)   [32]
//	server -> client  accept    status u8 | id len u8 | server node id | HMAC-SHA256(secret, "...server proof", sn, cn, client id, server id, kind, status)
//
// HMAC fields are length-prefixed. The server's fresh nonce makes a
// recorded proof useless on another connection (no replay); the role label
// keeps a client proof from passing as a server proof (no reflection);
// proofs are compared in constant time. Until the client's proof verifies,
// the server sends nothing but the random challenge and reads nothing but
// the hello and the proof: a peer without the secret learns not even the
// server's node id, and on failure the connection is simply closed. The
// server's node id travels in the accept (so the client proof binds only
// the client id), and the client checks the server's proof before it
// sends anything else. The secret authenticates peers; it neither
// encrypts nor integrity-protects the traffic that follows, so an active
// on-path attacker is out of scope (use an isolated network or, later,
// mTLS).
//
// Kind "rpc" selects the framed RPC below; any other kind hands the raw
// net.Conn to the ListenStream(kind) listener (status 1 in the accept
// means no such listener).
//
// # Frames
//
// All integers are little-endian. Header 32 bytes, payload, CRC trailer:
//
//	 0               1               2               3
//	+---------------+---------------+---------------+---------------+
//	|        frame length = payload length + 32 (u32)               |  0
//	+---------------+---------------+---------------+---------------+
//	|        magic 0xDA7E (u16)     |           op (u16)            |  4
//	+---------------+---------------+---------------+---------------+
//	|                      request id (u64)                         |  8
//	|                                                               |
//	+---------------+---------------+---------------+---------------+
//	|  flags (u8)   |          reserved, zero (3 bytes)             | 16
//	+---------------+---------------+---------------+---------------+
//	|          deadline, unix nanoseconds, 0 = none (i64)           | 20
//	|                                                               |
//	+---------------+---------------+---------------+---------------+
//	|                     payload length (u32)                      | 28
//	+---------------+---------------+---------------+---------------+
//	|                     payload (0..MaxFrame)                     | 32
//	+---------------+---------------+---------------+---------------+
//	|        CRC32C (Castagnoli) of header and payload (u32)        |
//	+---------------+---------------+---------------+---------------+
//
// Flags: 0x01 request, 0x02 response, 0x06 error response (payload: errno
// u32 then the message), 0x08 cancel (no payload; the request id names the
// request to cancel), 0x10 unchecked: on a request (0x11, itself checked
// in full) it says the caller verifies the response payload end to end
// (CallIntoSplit: the payload carries its own checksum, e.g. a page's
// CRC-32C), and the server then answers 0x12, whose CRC trailer covers the
// header alone. 0x10 is valid only in 0x11 and 0x12: never on cancels or
// error responses, a 0x12 from a client drops the connection, and so does
// a 0x12 answering a request that did not ask for it; an unchecked payload
// is bounded like any other (MaxFrame, and the caller's buffers). The header is validated before anything is
// allocated for the payload: a bad magic, an inconsistent length, a
// payload over MaxFrame, unknown flags, set reserved bytes, a bad CRC, or a
// frame that does not complete within DialTimeout (plus 1 s per MiB of
// payload) drops the connection with a logged (rate-limited) reason and a
// datenlord_transport_frame_errors_total{reason} count. A connection may be
// idle between frames for as long as it likes.
//
// # Multiplexing and back-pressure
//
// A client keeps one persistent connection per peer address, shared by all
// callers. Requests carry increasing ids; whoever holds the connection's
// read token matches responses to their callers, reading the payload
// straight into the caller's buffer (CallInto) or a fresh slice the caller
// then owns. A caller whose request is out and who finds the token free
// (an idle connection) takes it and reads its own response from the
// socket, with no goroutine hand-off on the way; callers who find it taken
// wait to be handed theirs, and a reader goroutine takes over whenever the
// holder leaves with calls still in flight. Nobody reads an idle
// connection: a call made after 10 ms without calls first checks, without
// blocking, that the peer has not closed it meanwhile. At most
// MaxInFlight requests are outstanding per connection: further callers
// wait, honouring their ctx. The server reads requests on one goroutine
// per connection and runs each handler on its own goroutine, at most
// MaxInFlight per connection; when all are busy it stops reading, and TCP
// flow control pushes back on the client. An op registered with
// HandleInline first tries its non-blocking fast path on the reader
// goroutine itself, building the response in a per-connection buffer: no
// goroutine hand-off and no allocation for, say, a page served from
// memory; what the fast path declines goes to the op's Handler as above.
// HandleInlineSend's fast path answers from memory it pins instead (a
// page in its arena slot), sent with no copy and unpinned once written.
//
// # Deadlines and cancellation
//
// The caller's ctx deadline travels in the request; the handler's ctx
// carries it (clocks are assumed roughly in sync). When the caller's ctx
// ends first, Call returns ctx.Err() at once (a caller reading its own
// response notices a cancel within a millisecond, at once after that) and
// a cancel frame tells the server, which cancels the handler's ctx and
// sends no response. A
// handler's ctx is also cancelled when its connection is lost or the
// transport closes.
//
// # Failures
//
// A connection that fails (I/O error, malformed frame) fails every call in
// flight on it with an error naming the peer and the cause. The next call
// dials again; dial and authentication failures start an exponential
// back-off with jitter (100 ms doubling to 5 s), during which calls to that
// peer fail at once with the last error and the time to the next attempt,
// e.g. "dial tcp 127.0.0.1:7002: connect: connection refused (retrying in
// 400ms)". Handler errors come back as *RemoteError (with the errno if the
// handler returned a syscall.Errno); unknown ops as RemoteError "unknown op
// 0x...". Handler panics are recovered and returned as errors: network
// input never crashes the node.
package tcpfallback

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Op codes identify request types (plain uint16 values, so that consumers
// can define the interface they need without importing this package). They
// are allocated by the packages that register handlers, in ranges:
// 0x0000-0x00ff transport internal, 0x0100-0x01ff meta, 0x0200-0x02ff
// cache, 0x0300-0x03ff fs.

// Handler serves one request: peer is the authenticated node id of the
// caller, req is valid only during the call. The returned payload is the
// response; an error is sent back as a RemoteError.
type Handler = func(ctx context.Context, peer string, req []byte) ([]byte, error)

// RemoteError is an error returned by a peer's handler. When the handler
// returned a syscall.Errno (possibly wrapped), Errno carries its number and
// Unwrap returns it, so callers can errors.Is(err, syscall.ENOENT) without
// knowing this package. A handler that failed with context.DeadlineExceeded
// or context.Canceled (the caller's propagated deadline or cancel) unwraps
// to that error, so a caller sees the same error whichever side's timer
// fired first.
type RemoteError struct {
	Errno   uint32
	Message string
}

// Reserved error codes beyond the errno range for the context errors.
const (
	codeDeadline = 1<<31 | 1
	codeCanceled = 1<<31 | 2
)

func (e *RemoteError) Error() string { return "remote: " + e.Message }

// Unwrap returns the errno or context error, or nil.
func (e *RemoteError) Unwrap() error {
	switch e.Errno {
	case 0:
		return nil
	case codeDeadline:
		return context.DeadlineExceeded
	case codeCanceled:
		return context.Canceled
	}
	return syscall.Errno(e.Errno)
}

// ErrUnauthenticated is returned (wrapped) when the peer rejects our
// credentials or fails to prove its own.
var ErrUnauthenticated = errors.New("peer authentication failed")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("transport closed")

// Config configures a Transport.
type Config struct {
	// NodeID names this node to peers (shown in logs and metrics).
	NodeID string
	// Listen is the TCP address to serve on ("" for a client-only
	// transport; "127.0.0.1:0" picks a free port).
	Listen string
	// Advertise is the address peers reach this node at (default: the
	// listener's address).
	Advertise string
	// Secret is the cluster secret both sides prove knowledge of (HMAC
	// challenge-response) before any other byte is accepted. Required.
	Secret []byte
	// DialTimeout bounds connection set-up including authentication
	// (0: 5s).
	DialTimeout time.Duration
	// MaxFrame bounds a frame's payload (0: 16 MiB); larger frames from a
	// peer drop the connection.
	MaxFrame int
	// MaxInFlight bounds concurrent requests per connection, in each
	// direction (0: 256): back-pressure.
	MaxInFlight int
	// Registerer receives transport metrics (nil: none).
	Registerer prometheus.Registerer
	// Logger receives structured logs (nil: slog.Default()).
	Logger *slog.Logger
}

// Defaults applied by New.
const (
	defaultDialTimeout = 5 * time.Second
	defaultMaxFrame    = 16 << 20
	defaultMaxInFlight = 256
	// maxPendingHandshakes bounds unauthenticated connections held at once.
	maxPendingHandshakes = 128
)

// Transport serves and calls RPCs and streams. Safe for concurrent use.
type Transport struct {
	cfg   Config
	log   *slog.Logger
	m     *metrics
	table *crc32.Table
	logs  logLimiter
	bufs  bufPool
	calls sync.Pool // *call
	// okCounters caches requests{op, outcome="ok"} by op (uint16).
	okCounters sync.Map

	ln   net.Listener
	addr string

	handlersMu sync.Mutex
	handlers   atomic.Pointer[map[uint16]handlerEntry]

	closed     atomic.Bool
	base       context.Context // cancelled by Close: parent of handler ctxs
	stop       context.CancelFunc
	mu         sync.Mutex
	peers      map[string]*peer
	conns      map[net.Conn]struct{} // incoming, until handed to a stream listener
	streams    map[string]*streamListener
	handshakes chan struct{}

	wg        sync.WaitGroup // accept loop, connection goroutines
	handlerWG sync.WaitGroup // handler goroutines
}

// New starts a transport; with cfg.Listen set it accepts connections at
// once (handlers registered later answer requests that arrive after
// registration; earlier ones get an "unknown op" error). ctx bounds
// start-up only: the transport lives until Close.
func New(ctx context.Context, cfg Config) (*Transport, error) {
	if len(cfg.Secret) == 0 {
		return nil, errors.New("tcpfallback: Config.Secret is required")
	}
	if cfg.NodeID == "" {
		var b [4]byte
		_, _ = rand.Read(b[:])
		cfg.NodeID = "client-" + hex.EncodeToString(b[:])
	}
	if err := validName(cfg.NodeID, maxNodeID); err != nil {
		return nil, fmt.Errorf("tcpfallback: Config.NodeID %q: %w", cfg.NodeID, err)
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = defaultDialTimeout
	}
	if cfg.MaxFrame <= 0 {
		cfg.MaxFrame = defaultMaxFrame
	}
	if cfg.MaxFrame > 1<<30 {
		return nil, fmt.Errorf("tcpfallback: Config.MaxFrame %d exceeds 1 GiB", cfg.MaxFrame)
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = defaultMaxInFlight
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	t := &Transport{
		cfg:        cfg,
		log:        cfg.Logger.With("component", "tcpfallback", "node", cfg.NodeID),
		m:          newMetrics(cfg.Registerer),
		table:      crc32.MakeTable(crc32.Castagnoli),
		peers:      make(map[string]*peer),
		conns:      make(map[net.Conn]struct{}),
		streams:    make(map[string]*streamListener),
		handshakes: make(chan struct{}, maxPendingHandshakes),
	}
	t.base, t.stop = context.WithCancel(context.Background())
	t.handlers.Store(&map[uint16]handlerEntry{})
	if cfg.Listen != "" {
		var lc net.ListenConfig
		ln, err := lc.Listen(ctx, "tcp", cfg.Listen)
		if err != nil {
			t.stop()
			return nil, fmt.Errorf("tcpfallback: listen: %w", err)
		}
		t.ln = ln
		t.addr = cfg.Advertise
		if t.addr == "" {
			t.addr = ln.Addr().String()
		}
		t.wg.Add(1)
		go t.acceptLoop()
		t.log.Info("transport listening", "addr", ln.Addr().String(), "advertise", t.addr)
	}
	return t, nil
}

// Addr returns the advertised address ("" for a client-only transport).
func (t *Transport) Addr() string { return t.addr }

// Handle registers the handler for op. Registering an op twice panics
// (a programming error).
func (t *Transport) Handle(op uint16, h Handler) {
	t.register(op, handlerEntry{h: h})
}

// InlineHandler is the fast path of an op registered with HandleInline. It
// runs on the connection's reader goroutine, so it must not block (no I/O,
// no waiting): a memory lookup and a copy. dst is a buffer the transport
// owns, of at least the scratch size given to HandleInline; the response
// may be built in it (the transport sends it before it reads the next
// frame) or be any other slice the handler does not modify afterwards.
// ok false hands the request to the op's Handler on its own goroutine, as
// for an op registered with Handle.
type InlineHandler = func(peer string, req, dst []byte) (resp []byte, ok bool)

// HandleInline registers op with a fast path run inline on the reader
// goroutine (no goroutine hand-off, no allocation for the response) and a
// Handler for the requests the fast path declines. Registering an op
// twice panics.
func (t *Transport) HandleInline(op uint16, scratch int, fast InlineHandler, h Handler) {
	if fast == nil || scratch < 0 || scratch > t.cfg.MaxFrame {
		panic(fmt.Sprintf("tcpfallback: bad inline handler for op 0x%04x (scratch %d)", op, scratch))
	}
	t.register(op, handlerEntry{h: h, fast: fast, scratch: scratch})
}

// InlineSender is the fast path of an op registered with
// HandleInlineSend: an InlineHandler whose response is head (built in dst,
// or any other slice) followed by body, memory the handler keeps pinned
// and unchanged until the transport calls the op's release with token,
// right after the response has been written (or has failed to be). The
// response goes out with no copy of body (but for a small response,
// copied once next to its header). ok false hands the request to the
// op's Handler, and nothing is released. A sender that panics forfeits
// the release of what it pinned: pin last.
type InlineSender = func(peer string, req, dst []byte) (head, body []byte, token uint64, ok bool)

// HandleInlineSend is HandleInline for a fast path that answers from
// memory it pins (say a page in an arena slot) rather than copying it
// into dst: release(token) unpins it once the response is written.
// Registering an op twice panics.
func (t *Transport) HandleInlineSend(op uint16, scratch int, fast InlineSender, release func(token uint64), h Handler) {
	if fast == nil || release == nil || scratch < 0 || scratch > t.cfg.MaxFrame {
		panic(fmt.Sprintf("tcpfallback: bad inline sender for op 0x%04x (scratch %d)", op, scratch))
	}
	t.register(op, handlerEntry{h: h, send: fast, release: release, scratch: scratch})
}

// handlerEntry is what serves one op: Handler h, with an inline fast
// path (fast or send, then release) or none.
type handlerEntry struct {
	h       Handler
	fast    InlineHandler
	send    InlineSender
	release func(token uint64)
	scratch int
}

// inline reports whether the op has an inline fast path.
func (e *handlerEntry) inline() bool { return e.fast != nil || e.send != nil }

func (t *Transport) register(op uint16, e handlerEntry) {
	if e.h == nil {
		panic(fmt.Sprintf("tcpfallback: nil handler for op 0x%04x", op))
	}
	t.handlersMu.Lock()
	defer t.handlersMu.Unlock()
	old := *t.handlers.Load()
	if _, ok := old[op]; ok {
		panic(fmt.Sprintf("tcpfallback: op 0x%04x registered twice", op))
	}
	next := make(map[uint16]handlerEntry, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	next[op] = e
	t.handlers.Store(&next)
}

// Call sends a request to the node at addr and waits for the response,
// until ctx ends. Connections are persistent, multiplexed and reconnected
// with back-off. The deadline of ctx travels with the request so the peer
// stops working on it when the caller has given up.
func (t *Transport) Call(ctx context.Context, addr string, op uint16, req []byte) ([]byte, error) {
	return t.CallInto(ctx, addr, op, req, nil)
}

// CallInto is Call that reads the response payload straight from the
// socket into resp when it fits (cap(resp) >= response length), returning
// resp[:n]; otherwise into a new slice. The transport may write into resp
// until CallInto returns, never after.
func (t *Transport) CallInto(ctx context.Context, addr string, op uint16, req, resp []byte) ([]byte, error) {
	out, _, _, err := t.call(ctx, 0, addr, op, req, resp, nil, false)
	return out, err
}

// call is CallInto and CallIntoSplit, bounded by timeout (0: none) as
// well as ctx; a split call also returns the CRC-32C of body's bytes.
func (t *Transport) call(ctx context.Context, timeout time.Duration, addr string, op uint16, req, into, body []byte, split bool) ([]byte, int, uint32, error) {
	if t.closed.Load() {
		return nil, 0, 0, ErrClosed
	}
	if len(req) > t.cfg.MaxFrame {
		return nil, 0, 0, fmt.Errorf("call op 0x%04x to %s: request of %d bytes exceeds MaxFrame %d", op, addr, len(req), t.cfg.MaxFrame)
	}
	start := time.Now()
	deadline, _ := ctx.Deadline()
	timed := false
	if timeout > 0 {
		if d := start.Add(timeout); deadline.IsZero() || d.Before(deadline) {
			deadline, timed = d, true
		}
	}
	p, err := t.peer(addr)
	var out []byte
	var n int
	var sum uint32
	if err == nil {
		var cc *clientConn
		if cc, err = p.get(ctx, deadline, timed, start); err == nil {
			out, n, sum, err = cc.roundTrip2(ctx, deadline, timed, op, req, into, body, split)
		}
	}
	if err != nil {
		t.m.requests.WithLabelValues(opLabel(op), outcome(err)).Inc()
		return nil, 0, 0, fmt.Errorf("call op 0x%04x to %s: %w", op, addr, err)
	}
	t.okCounter(op).Inc()
	p.observeDuration(time.Since(start).Seconds())
	return out, n, sum, nil
}

// CallIntoSplit is CallInto for a response that carries its own
// end-to-end checksum, which the caller verifies: the peer sends the
// payload without the frame CRC (the trailer still covers the header), and
// the payload is read straight from the socket into head (its first
// len(head) bytes) and then body, never elsewhere. It returns the payload
// length n: the payload is head[:min(n, len(head))] followed by
// body[:n-len(head)]. A payload longer than len(head)+len(body) fails the
// call. Error responses are checked in full, as for CallInto. The
// transport may write into head and body until CallIntoSplit returns,
// never after.
func (t *Transport) CallIntoSplit(ctx context.Context, addr string, op uint16, req, head, body []byte) (int, error) {
	_, n, _, err := t.call(ctx, 0, addr, op, req, head, body, true)
	return n, err
}

// CallIntoSplitTimeout is CallIntoSplit bounded by timeout as well as
// ctx, as under context.WithTimeout(ctx, timeout) (the earlier deadline
// travels with the request; when timeout ends the call first it fails
// with an error wrapping context.DeadlineExceeded) but without deriving
// a context: a call on an established connection with a ctx that cannot
// be cancelled (context.Background) allocates nothing. It also returns
// bodySum, the CRC-32C (Castagnoli) of body[:max(0, n-len(head))],
// computed chunk by chunk as the bytes landed in body, while the rest
// was still arriving: a caller verifying the payload against its own
// checksum compares with bodySum instead of hashing body again.
func (t *Transport) CallIntoSplitTimeout(ctx context.Context, timeout time.Duration, addr string, op uint16, req, head, body []byte) (n int, bodySum uint32, err error) {
	_, n, bodySum, err = t.call(ctx, timeout, addr, op, req, head, body, true)
	return n, bodySum, err
}

// okCounter returns requests{op, outcome="ok"}, resolved once per op.
func (t *Transport) okCounter(op uint16) prometheus.Counter {
	if c, ok := t.okCounters.Load(op); ok {
		return c.(prometheus.Counter)
	}
	c, _ := t.okCounters.LoadOrStore(op, t.m.requests.WithLabelValues(opLabel(op), "ok"))
	return c.(prometheus.Counter)
}

func opLabel(op uint16) string { return fmt.Sprintf("0x%04x", op) }

func outcome(err error) string {
	var re *RemoteError
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	case errors.As(err, &re):
		return "remote_error"
	case errors.Is(err, ErrClosed):
		return "closed"
	case errors.Is(err, errConnLost):
		return "conn_lost"
	}
	return "unavailable"
}

// ListenStream returns a listener of incoming authenticated raw streams of
// the given kind (e.g. "raft"), multiplexed on this transport's port. Its
// Addr is the advertised address. Listening twice on one kind is an error.
func (t *Transport) ListenStream(kind string) (net.Listener, error) {
	if err := validName(kind, maxKind); err != nil || kind == kindRPC {
		return nil, fmt.Errorf("tcpfallback: invalid stream kind %q", kind)
	}
	if t.ln == nil {
		return nil, errors.New("tcpfallback: ListenStream on a client-only transport")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed.Load() {
		return nil, ErrClosed
	}
	if _, ok := t.streams[kind]; ok {
		return nil, fmt.Errorf("tcpfallback: stream kind %q already has a listener", kind)
	}
	l := &streamListener{t: t, kind: kind, ch: make(chan net.Conn, 16), done: make(chan struct{})}
	t.streams[kind] = l
	return l, nil
}

// DialStream opens an authenticated raw stream of the given kind to addr,
// until ctx ends. hashicorp/raft's StreamLayer is ListenStream plus
// DialStream (the meta package adapts it).
func (t *Transport) DialStream(ctx context.Context, kind, addr string) (net.Conn, error) {
	if err := validName(kind, maxKind); err != nil || kind == kindRPC {
		return nil, fmt.Errorf("tcpfallback: invalid stream kind %q", kind)
	}
	if t.closed.Load() {
		return nil, ErrClosed
	}
	conn, _, err := t.dial(ctx, addr, kind)
	if err != nil {
		return nil, fmt.Errorf("open %s stream to %s: %w", kind, addr, err)
	}
	return conn, nil
}

// dial connects to addr and authenticates as kind, within DialTimeout and
// ctx. It returns the connection and the server's node id.
func (t *Transport) dial(ctx context.Context, addr, kind string) (net.Conn, string, error) {
	ctx, cancel := context.WithTimeout(ctx, t.cfg.DialTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, "", err
	}
	dl, _ := ctx.Deadline()
	_ = conn.SetDeadline(dl)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	peerID, err := clientHandshake(conn, t.cfg.Secret, t.cfg.NodeID, kind)
	if !stop() || err != nil {
		conn.Close()
		if err == nil || ctx.Err() != nil {
			err = fmt.Errorf("authenticate with %s: %w", addr, context.Cause(ctx))
		} else {
			err = fmt.Errorf("authenticate with %s: %w", addr, err)
		}
		return nil, "", err
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, peerID, nil
}

// Close stops serving, closes every connection and fails calls in flight
// with ErrClosed. Handlers still running get a cancelled ctx; Close waits
// for them up to DialTimeout.
func (t *Transport) Close() error {
	if t.closed.Swap(true) {
		return nil
	}
	var err error
	if t.ln != nil {
		err = t.ln.Close()
	}
	t.mu.Lock()
	peers := make([]*peer, 0, len(t.peers))
	for _, p := range t.peers {
		peers = append(peers, p)
	}
	for c := range t.conns {
		c.Close()
	}
	streams := make([]*streamListener, 0, len(t.streams))
	for _, l := range t.streams {
		streams = append(streams, l)
	}
	t.mu.Unlock()
	for _, l := range streams {
		l.Close()
	}
	for _, p := range peers {
		p.close()
	}
	t.stop() // handlers blocking a full connection must let go
	t.wg.Wait()
	done := make(chan struct{})
	go func() { t.handlerWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(t.cfg.DialTimeout):
		t.log.Warn("handlers still running after close; they ignore their ctx")
	}
	return err
}

// invoke runs a handler, turning a panic into an error.
func (t *Transport) invoke(h Handler, ctx context.Context, peer string, op uint16, req []byte) (resp []byte, err error) {
	defer func() {
		if r := recover(); r != nil {
			t.log.Error("handler panic", "op", opLabel(op), "peer", peer, "panic", r, "stack", string(debug.Stack()))
			resp, err = nil, fmt.Errorf("handler for op 0x%04x panicked: %v", op, r)
		}
	}()
	return h(ctx, peer, req)
}

// invokeInline runs the fast path of e (fast or send), turning a panic
// into an error. pinned reports that release(token) is owed.
func (t *Transport) invokeInline(e *handlerEntry, peer string, op uint16, req, dst []byte) (head, body []byte, token uint64, pinned, ok bool, err error) {
	defer func() {
		if r := recover(); r != nil {
			t.log.Error("inline handler panic", "op", opLabel(op), "peer", peer, "panic", r, "stack", string(debug.Stack()))
			head, body, pinned, ok, err = nil, nil, false, true, fmt.Errorf("handler for op 0x%04x panicked: %v", op, r)
		}
	}()
	if e.send != nil {
		head, body, token, ok = e.send(peer, req, dst)
		return head, body, token, ok, ok, nil
	}
	head, ok = e.fast(peer, req, dst)
	return head, nil, 0, false, ok, nil
}
