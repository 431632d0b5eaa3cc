package tcpfallback

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// errConnLost marks calls failed because their connection broke.
var errConnLost = errors.New("connection lost")

// Reconnect back-off bounds.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// peer holds the connection to one address and its reconnect state.
type peer struct {
	t    *Transport
	addr string

	mu      sync.Mutex
	cc      *clientConn
	dialing chan struct{} // closed when the dial in progress ends
	lastErr error
	retryAt time.Time
	backoff time.Duration

	duration prometheus.Observer // request_duration_seconds{peer=addr}
}

func (p *peer) observeDuration(sec float64) { p.duration.Observe(sec) }

func (t *Transport) peer(addr string) (*peer, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed.Load() {
		return nil, ErrClosed
	}
	p := t.peers[addr]
	if p == nil {
		p = &peer{t: t, addr: addr, duration: t.m.duration.WithLabelValues(addr)}
		t.peers[addr] = p
	}
	return p, nil
}

// get returns a live connection for a call starting at now, dialing if
// needed (within the call's deadline when timed, else ctx's); while the
// peer is in back-off it fails at once with the last dial error.
func (p *peer) get(ctx context.Context, deadline time.Time, timed bool, now time.Time) (*clientConn, error) {
	p.mu.Lock()
	cc := p.cc
	p.mu.Unlock()
	if cc != nil && !cc.isDead() && !p.t.closed.Load() && cc.usable(now) {
		return cc, nil
	}
	if timed {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	for {
		p.mu.Lock()
		if p.t.closed.Load() {
			p.mu.Unlock()
			return nil, ErrClosed
		}
		if cc := p.cc; cc != nil && !cc.isDead() {
			p.mu.Unlock()
			return cc, nil
		}
		if ch := p.dialing; ch != nil {
			p.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if now := time.Now(); now.Before(p.retryAt) {
			err := fmt.Errorf("%w (retrying in %v)", p.lastErr, p.retryAt.Sub(now).Round(time.Millisecond))
			p.mu.Unlock()
			return nil, err
		}
		ch := make(chan struct{})
		p.dialing = ch
		p.mu.Unlock()

		conn, peerID, err := p.t.dial(ctx, p.addr, kindRPC)

		p.mu.Lock()
		p.dialing = nil
		close(ch)
		if err != nil {
			if ctx.Err() == nil {
				// The peer failed, not our caller: back off.
				p.backoff = min(max(2*p.backoff, minBackoff), maxBackoff)
				jittered := p.backoff/2 + rand.N(p.backoff/2+1)
				p.retryAt = time.Now().Add(jittered)
				p.lastErr = err
				err = fmt.Errorf("%w (retrying in %v)", err, jittered.Round(time.Millisecond))
			}
			p.mu.Unlock()
			return nil, err
		}
		if p.t.closed.Load() {
			p.mu.Unlock()
			conn.Close()
			return nil, ErrClosed
		}
		p.backoff, p.retryAt, p.lastErr = 0, time.Time{}, nil
		cc := p.t.newClientConn(p, conn, peerID)
		p.cc = cc
		p.mu.Unlock()
		return cc, nil
	}
}

func (p *peer) close() {
	p.mu.Lock()
	cc := p.cc
	p.cc = nil
	p.mu.Unlock()
	if cc != nil {
		cc.fail(ErrClosed)
	}
}

// call is one outstanding request.
type call struct {
	into []byte
	// split: a CallIntoSplit call (payload scattered over into and body,
	// unchecked responses accepted); n is then the payload length.
	split bool
	body  []byte
	n     int
	// sum: compute bodySum, the CRC-32C of the bytes read into body.
	sum     bool
	bodySum uint32
	resp    []byte
	err     error
	done    chan struct{} // receives once when resp/err are set by another goroutine
	// timer bounds a waiting caller's explicit timeout (reused).
	timer *time.Timer
}

// leaderGrace is how long a caller reading its own response polls a
// cancellable ctx (noticing a cancel within leaderGrace) before it
// watches it (noticing at once).
const leaderGrace = time.Millisecond

// idleProbe is how long a connection may go without calls before the
// next call checks, without blocking, that the peer has not closed it in
// the meantime (no goroutine watches an idle connection).
const idleProbe = 10 * time.Millisecond

// clientConn is one outgoing, authenticated RPC connection.
//
// Reading is done by whoever holds the read token (reading): a caller
// whose request is sent and who finds the token free takes it and reads
// frames itself (delivering any other caller's response it meets on the
// way) until its own response has arrived, so that on an idle connection
// a response goes from the socket into the caller's buffer with no
// goroutine hand-off. A caller who finds the token taken waits to be
// handed its response. When the holder leaves with calls still in flight
// (or a response of an abandoned call may still come) it hands the token
// to readLoop, which reads until no call is left. Nobody reads a
// connection without calls in flight: a peer's close is noticed by the
// next call's probe (idleProbe) or read.
type clientConn struct {
	t      *Transport
	p      *peer
	conn   net.Conn
	raw    syscall.RawConn // for the idle probe; nil if unavailable
	peerID string
	fr     *frameReader
	fw     *frameWriter
	sem    chan struct{}
	dead   chan struct{}
	wake   chan struct{} // hands the read token to readLoop
	// interrupt is fr.interrupt, bound once (no allocation per call).
	interrupt func()
	// lastCall is when the last call started (unix nanoseconds).
	lastCall atomic.Int64

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]*call
	err     error
	reading bool // the read token is taken
	// drain: a call was abandoned after its request went out; its
	// response may still come, and must be read even if no call waits.
	drain bool
}

func (t *Transport) newClientConn(p *peer, conn net.Conn, peerID string) *clientConn {
	cc := &clientConn{
		t:       t,
		p:       p,
		conn:    conn,
		peerID:  peerID,
		fr:      newFrameReader(conn, conn, t.cfg.MaxFrame, t.cfg.DialTimeout, t.table),
		fw:      newFrameWriter(conn, t.cfg.DialTimeout, t.table),
		sem:     make(chan struct{}, t.cfg.MaxInFlight),
		dead:    make(chan struct{}),
		wake:    make(chan struct{}, 1),
		pending: make(map[uint64]*call),
	}
	cc.interrupt = cc.fr.interrupt
	if sc, ok := conn.(syscall.Conn); ok {
		cc.raw, _ = sc.SyscallConn()
	}
	cc.lastCall.Store(time.Now().UnixNano())
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true) // the default, made explicit: latency matters more than segment counts
	}
	t.m.conns.WithLabelValues("out", kindRPC).Inc()
	t.wg.Add(1)
	go cc.readLoop()
	return cc
}

func (cc *clientConn) isDead() bool {
	select {
	case <-cc.dead:
		return true
	default:
		return false
	}
}

// usable reports whether a live connection may take a call starting at
// now. After idleProbe without calls it checks, without blocking, that
// the peer has not closed the connection meanwhile (then it fails the
// connection, so that the caller dials a new one instead of losing its
// call to a stale one).
func (cc *clientConn) usable(now time.Time) bool {
	last := cc.lastCall.Swap(now.UnixNano())
	if now.UnixNano()-last < int64(idleProbe) || cc.raw == nil {
		return true
	}
	cc.mu.Lock()
	if cc.reading || len(cc.pending) > 0 || cc.err != nil {
		// Someone reads (and notices a close), or it is failed already.
		ok := cc.err == nil
		cc.mu.Unlock()
		return ok
	}
	cc.reading = true // no one may read while we peek
	cc.mu.Unlock()
	closed := cc.fr.br.Buffered() == 0 && peerClosed(cc.raw)
	cc.releaseRead()
	if closed {
		cc.fail(errors.New("closed by peer while idle"))
		return false
	}
	return true
}

// fail closes the connection and fails every pending call; the first
// cause wins.
func (cc *clientConn) fail(cause error) {
	cc.mu.Lock()
	if cc.err != nil {
		cc.mu.Unlock()
		return
	}
	if errors.Is(cause, ErrClosed) {
		cc.err = fmt.Errorf("connection to %s (%s): %w", cc.p.addr, cc.peerID, ErrClosed)
	} else {
		cc.err = fmt.Errorf("connection to %s (%s): %w: %w", cc.p.addr, cc.peerID, errConnLost, cause)
	}
	pending := cc.pending
	cc.pending = nil
	close(cc.dead)
	cc.mu.Unlock()
	cc.conn.Close()
	cc.t.m.conns.WithLabelValues("out", kindRPC).Dec()
	for _, c := range pending {
		c.err = cc.err
		c.done <- struct{}{}
	}
}

func (t *Transport) getCall() *call {
	if c, ok := t.calls.Get().(*call); ok {
		return c
	}
	return &call{done: make(chan struct{}, 1)}
}

func (t *Transport) putCall(c *call) {
	c.into, c.body, c.resp, c.err = nil, nil, nil, nil
	c.split, c.n, c.sum, c.bodySum = false, 0, false, 0
	t.calls.Put(c)
}

// roundTrip sends one request and waits for its response.
func (cc *clientConn) roundTrip(ctx context.Context, op uint16, req, into []byte) ([]byte, error) {
	dl, _ := ctx.Deadline()
	resp, _, _, err := cc.roundTrip2(ctx, dl, false, op, req, into, nil, false)
	return resp, err
}

// roundTrip2 is roundTrip for a split call (see CallIntoSplit) too, with
// the call's deadline (zero: none) given: ctx's, or an earlier one of the
// caller's (timed), after which the call fails with
// context.DeadlineExceeded as if ctx had that deadline. A split call also
// returns the CRC-32C of the bytes read into body.
func (cc *clientConn) roundTrip2(ctx context.Context, deadline time.Time, timed bool, op uint16, req, into, body []byte, split bool) ([]byte, int, uint32, error) {
	select {
	case cc.sem <- struct{}{}:
	default:
		wctx := ctx
		if timed {
			var cancel context.CancelFunc
			wctx, cancel = context.WithDeadline(ctx, deadline)
			defer cancel()
		}
		select {
		case cc.sem <- struct{}{}:
		case <-wctx.Done():
			return nil, 0, 0, wctx.Err()
		case <-cc.dead:
			return nil, 0, 0, cc.deadErr()
		}
	}
	defer func() { <-cc.sem }()
	if err := ctx.Err(); err != nil {
		return nil, 0, 0, err
	}
	c := cc.t.getCall()
	c.into, c.body, c.split, c.sum = into, body, split, split
	cc.mu.Lock()
	if cc.err != nil {
		err := cc.err
		cc.mu.Unlock()
		cc.t.putCall(c)
		return nil, 0, 0, err
	}
	cc.nextID++
	id := cc.nextID
	cc.pending[id] = c
	cc.mu.Unlock()

	h := header{op: op, id: id, flags: flagRequest}
	if split {
		h.flags |= flagUnchecked
	}
	if !deadline.IsZero() {
		h.deadline = deadline.UnixNano()
	}
	if err := cc.fw.write(h, req); err != nil {
		cc.fail(err) // completes c with the connection's error
	}
	// Take the read token only now that the request is out: a caller
	// blocked in a write must never hold it (the peer may be blocked
	// writing a response nobody would read). The holder of the token
	// may have read our response meanwhile and released the token: then
	// c is no longer pending, and its completion is waiting in c.done.
	cc.mu.Lock()
	_, pending := cc.pending[id]
	lead := !cc.reading && cc.err == nil && pending
	if lead {
		cc.reading = true
	}
	cc.mu.Unlock()
	var abandoned error
	if lead {
		abandoned = cc.lead(ctx, deadline, c, id)
	} else {
		abandoned = cc.follow(ctx, deadline, timed, c, id)
	}
	if abandoned != nil {
		cc.t.wg.Add(1)
		go cc.sendCancel(op, id)
		return nil, 0, 0, abandoned
	}
	resp, n, sum, err := c.resp, c.n, c.bodySum, c.err
	cc.t.putCall(c)
	if err != nil {
		if cerr := expired(ctx, deadline); cerr != nil {
			// The handler most likely failed because our deadline, which
			// it shares, passed: report that, as the contract of ctx says.
			return nil, 0, 0, cerr
		}
	}
	return resp, n, sum, err
}

// expired returns why a call must end now: ctx's error or, once the
// call's deadline (ctx's or an earlier one of the caller's) has passed,
// context.DeadlineExceeded.
func expired(ctx context.Context, deadline time.Time) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !deadline.IsZero() && !time.Now().Before(deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

// lead reads frames with the read token until c's response has arrived
// (c is then complete), c's caller gives up (its error is returned: c is
// abandoned and recycled) or the connection fails (c is completed with
// its error). It releases the token.
func (cc *clientConn) lead(ctx context.Context, deadline time.Time, c *call, id uint64) error {
	// A ctx that can be cancelled is watched (context.AfterFunc, which
	// allocates) only once the call has outlasted leaderGrace: most
	// responses come sooner, and until then the wait polls ctx at
	// graceEnd.
	var stop func() bool
	defer func() {
		if stop != nil {
			stop()
		}
	}()
	watch := ctx.Done() != nil
	var graceEnd time.Time
	if watch {
		graceEnd = time.Now().Add(leaderGrace)
	}
	for {
		wait, interruptible := deadline, stop != nil
		if watch && stop == nil && (deadline.IsZero() || graceEnd.Before(deadline)) {
			wait = graceEnd
		}
		got, err := cc.readFrame(wait, interruptible)
		if got == c {
			if err != nil {
				cc.fail(err)
				return nil
			}
			cc.releaseRead()
			return nil
		}
		if got != nil {
			got.done <- struct{}{}
		}
		switch {
		case err == nil:
			if expired(ctx, deadline) == nil {
				continue
			}
		case errors.Is(err, errWaitEnded):
			if expired(ctx, deadline) == nil {
				if watch && stop == nil {
					stop = context.AfterFunc(ctx, cc.interrupt) // the grace is over
				}
				continue // or an interrupt meant for an earlier holder
			}
		default:
			cc.fail(err) // completes c
			<-c.done
			return nil
		}
		// Our caller gave up while no frame was in progress: nobody
		// writes into c's buffers.
		cc.mu.Lock()
		_, waiting := cc.pending[id]
		delete(cc.pending, id)
		if waiting {
			cc.drain = true
		}
		cc.mu.Unlock()
		if !waiting { // failed meanwhile: completed by fail
			<-c.done
			return nil
		}
		cc.releaseRead()
		cc.t.putCall(c)
		return expired(ctx, deadline)
	}
}

// follow waits for c's response, read by the holder of the read token.
// It returns the caller's error if the caller gave up first (c is then
// abandoned and recycled).
func (cc *clientConn) follow(ctx context.Context, deadline time.Time, timed bool, c *call, id uint64) error {
	var timeout <-chan time.Time
	if timed {
		d := time.Until(deadline)
		if c.timer == nil {
			c.timer = time.NewTimer(d)
		} else {
			c.timer.Reset(d)
		}
		timeout = c.timer.C
	}
	select {
	case <-c.done:
		if timed {
			c.timer.Stop()
		}
		return nil
	case <-ctx.Done():
	case <-timeout:
	}
	if timed {
		c.timer.Stop() // before c can be recycled
	}
	cc.mu.Lock()
	_, waiting := cc.pending[id]
	delete(cc.pending, id)
	if waiting {
		cc.drain = true
		if !cc.reading && cc.err == nil {
			cc.reading = true
			cc.wake <- struct{}{}
		}
	}
	cc.mu.Unlock()
	if !waiting {
		// The reader already owns c (and may be writing into into):
		// its answer is imminent.
		<-c.done
		return nil
	}
	cc.t.putCall(c)
	if err := expired(ctx, deadline); err != nil {
		return err
	}
	return context.DeadlineExceeded
}

// releaseRead gives up the read token: to readLoop while calls are in
// flight (or an abandoned call's response may come), else to whoever
// takes it next.
func (cc *clientConn) releaseRead() {
	cc.mu.Lock()
	if cc.err == nil && (len(cc.pending) > 0 || cc.drain) {
		cc.mu.Unlock()
		cc.wake <- struct{}{} // never blocks: one token, one wake
		return
	}
	cc.reading = false
	cc.mu.Unlock()
}

func (cc *clientConn) deadErr() error {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	return cc.err
}

func (cc *clientConn) sendCancel(op uint16, id uint64) {
	defer cc.t.wg.Done()
	if err := cc.fw.write(header{op: op, id: id, flags: flagCancel}); err != nil {
		cc.fail(err)
	}
}

// readLoop reads frames whenever it is handed the read token, until no
// call is left in flight, and until the connection ends.
func (cc *clientConn) readLoop() {
	defer cc.t.wg.Done()
	for {
		select {
		case <-cc.wake:
		case <-cc.dead:
			return
		}
		for {
			cc.mu.Lock()
			if cc.err != nil {
				cc.mu.Unlock()
				return
			}
			if len(cc.pending) == 0 && !cc.drain {
				cc.reading = false
				cc.mu.Unlock()
				break
			}
			cc.drain = false
			cc.mu.Unlock()
			c, err := cc.readFrame(time.Time{}, false)
			if c != nil {
				c.done <- struct{}{}
			}
			if err != nil {
				cc.fail(err)
				return
			}
		}
	}
}

// readFrame reads one frame (waiting for it until deadline, and until
// interrupted if interruptible; then errWaitEnded) and matches it to its
// pending call, which it returns completed (resp or err set, removed from
// pending) but not yet told. Any other error is the connection's end: the
// caller fails the connection with it.
func (cc *clientConn) readFrame(deadline time.Time, interruptible bool) (*call, error) {
	h, err := cc.fr.readHeaderBy(deadline, interruptible)
	if errors.Is(err, errWaitEnded) {
		return nil, err
	}
	if err == nil && h.flags&flagResponse == 0 {
		err = badFrame("unexpected", "flags 0x%02x from a server", h.flags)
	}
	if err != nil {
		if errors.Is(err, io.EOF) {
			err = errors.New("closed by peer")
		}
		if fe := (*frameError)(nil); errors.As(err, &fe) && !cc.isDead() {
			cc.t.m.frameErrors.WithLabelValues(fe.reason).Inc()
			cc.t.logs.warn(cc.t.log, "dropping connection", "peer", cc.peerID, "addr", cc.p.addr, "reason", err)
		}
		return nil, err
	}
	cc.mu.Lock()
	c := cc.pending[h.id]
	delete(cc.pending, h.id)
	cc.mu.Unlock()
	if c == nil { // abandoned by its caller
		return nil, cc.fr.discardPayload(h.length)
	}
	if h.flags&flagUnchecked != 0 && !c.split {
		err := badFrame("unexpected", "unchecked response to a checked request")
		c.err = fmt.Errorf("connection to %s (%s): %w: %w", cc.p.addr, cc.peerID, errConnLost, err)
		cc.t.m.frameErrors.WithLabelValues("unexpected").Inc()
		cc.t.logs.warn(cc.t.log, "dropping connection", "peer", cc.peerID, "addr", cc.p.addr, "reason", err)
		return c, err
	}
	var head, body []byte
	switch {
	case h.flags&flagError != 0:
		head = make([]byte, h.length)
	case c.split:
		if int(h.length) > len(c.into)+len(c.body) {
			// Too long for the caller's buffers: skip it (checked or
			// not, its bytes go nowhere) and fail the call.
			if err := cc.fr.discardPayload(h.length); err != nil {
				c.err = fmt.Errorf("connection to %s (%s): %w: %w", cc.p.addr, cc.peerID, errConnLost, err)
				return c, err
			}
			c.err = fmt.Errorf("response of %d bytes exceeds the %d-byte buffer", h.length, len(c.into)+len(c.body))
			return c, nil
		}
		head = c.into[:min(int(h.length), len(c.into))]
		body = c.body[:int(h.length)-len(head)]
	case cap(c.into) < int(h.length):
		head = make([]byte, h.length)
	default:
		head = c.into[:h.length]
	}
	if c.sum {
		c.bodySum, err = cc.fr.readPayloadSum(head, body)
	} else {
		err = cc.fr.readPayload2(head, body)
	}
	if err != nil {
		c.err = fmt.Errorf("connection to %s (%s): %w: %w", cc.p.addr, cc.peerID, errConnLost, err)
		return c, err
	}
	if h.flags&flagError != 0 {
		c.err = decodeRemoteError(head)
	} else {
		c.resp, c.n = head, int(h.length)
	}
	return c, nil
}
