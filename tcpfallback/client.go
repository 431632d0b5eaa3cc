package tcpfallback

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"sync"
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

// get returns a live connection, dialing if needed; while the peer is in
// back-off it fails at once with the last dial error.
func (p *peer) get(ctx context.Context) (*clientConn, error) {
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
	resp  []byte
	err   error
	done  chan struct{} // receives once when resp/err are set
}

// clientConn is one outgoing, authenticated RPC connection.
type clientConn struct {
	t      *Transport
	p      *peer
	conn   net.Conn
	peerID string
	fr     *frameReader
	fw     *frameWriter
	sem    chan struct{}
	dead   chan struct{}

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]*call
	err     error
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
		pending: make(map[uint64]*call),
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
	c.split, c.n = false, 0
	t.calls.Put(c)
}

// roundTrip sends one request and waits for its response.
func (cc *clientConn) roundTrip(ctx context.Context, op uint16, req, into []byte) ([]byte, error) {
	resp, _, err := cc.roundTrip2(ctx, op, req, into, nil, false)
	return resp, err
}

// roundTrip2 is roundTrip, for a split call (see CallIntoSplit) too.
func (cc *clientConn) roundTrip2(ctx context.Context, op uint16, req, into, body []byte, split bool) ([]byte, int, error) {
	select {
	case cc.sem <- struct{}{}:
	default:
		select {
		case cc.sem <- struct{}{}:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		case <-cc.dead:
			return nil, 0, cc.deadErr()
		}
	}
	defer func() { <-cc.sem }()
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	c := cc.t.getCall()
	c.into, c.body, c.split = into, body, split
	cc.mu.Lock()
	if cc.err != nil {
		err := cc.err
		cc.mu.Unlock()
		cc.t.putCall(c)
		return nil, 0, err
	}
	cc.nextID++
	id := cc.nextID
	cc.pending[id] = c
	cc.mu.Unlock()

	h := header{op: op, id: id, flags: flagRequest}
	if split {
		h.flags |= flagUnchecked
	}
	if dl, ok := ctx.Deadline(); ok {
		h.deadline = dl.UnixNano()
	}
	if err := cc.fw.write(h, req); err != nil {
		cc.fail(err) // completes c with the connection's error
	}
	select {
	case <-c.done:
	case <-ctx.Done():
		cc.mu.Lock()
		_, waiting := cc.pending[id]
		delete(cc.pending, id)
		cc.mu.Unlock()
		if waiting {
			cc.t.putCall(c)
			cc.t.wg.Add(1)
			go cc.sendCancel(op, id)
			return nil, 0, ctx.Err()
		}
		// The reader already owns c (and may be writing into into):
		// its answer is imminent.
		<-c.done
	}
	resp, n, err := c.resp, c.n, c.err
	cc.t.putCall(c)
	if err != nil && ctx.Err() != nil {
		// The handler most likely failed because our deadline, which it
		// shares, passed: report that, as the contract of ctx says.
		return nil, 0, ctx.Err()
	}
	return resp, n, err
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

// readLoop matches responses to pending calls until the connection ends.
func (cc *clientConn) readLoop() {
	defer cc.t.wg.Done()
	for {
		h, err := cc.fr.readHeader()
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
			cc.fail(err)
			return
		}
		cc.mu.Lock()
		c := cc.pending[h.id]
		delete(cc.pending, h.id)
		cc.mu.Unlock()
		if c == nil { // abandoned by its caller
			if err := cc.fr.discardPayload(h.length); err != nil {
				cc.fail(err)
				return
			}
			continue
		}
		if h.flags&flagUnchecked != 0 && !c.split {
			err := badFrame("unexpected", "unchecked response to a checked request")
			c.err = fmt.Errorf("connection to %s (%s): %w: %w", cc.p.addr, cc.peerID, errConnLost, err)
			c.done <- struct{}{}
			cc.t.m.frameErrors.WithLabelValues("unexpected").Inc()
			cc.t.logs.warn(cc.t.log, "dropping connection", "peer", cc.peerID, "addr", cc.p.addr, "reason", err)
			cc.fail(err)
			return
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
					c.done <- struct{}{}
					cc.fail(err)
					return
				}
				c.err = fmt.Errorf("response of %d bytes exceeds the %d-byte buffer", h.length, len(c.into)+len(c.body))
				c.done <- struct{}{}
				continue
			}
			head = c.into[:min(int(h.length), len(c.into))]
			body = c.body[:int(h.length)-len(head)]
		case cap(c.into) < int(h.length):
			head = make([]byte, h.length)
		default:
			head = c.into[:h.length]
		}
		if err := cc.fr.readPayload2(head, body); err != nil {
			c.err = fmt.Errorf("connection to %s (%s): %w: %w", cc.p.addr, cc.peerID, errConnLost, err)
			c.done <- struct{}{}
			cc.fail(err)
			return
		}
		if h.flags&flagError != 0 {
			c.err = decodeRemoteError(head)
		} else {
			c.resp, c.n = head, int(h.length)
		}
		c.done <- struct{}{}
	}
}
