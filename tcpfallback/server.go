package tcpfallback

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

func (t *Transport) acceptLoop() {
	defer t.wg.Done()
	var backoff time.Duration
	for {
		conn, err := t.ln.Accept()
		if err != nil {
			if t.closed.Load() || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of file descriptors and the like: wait, do not spin.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			t.log.Warn("accept failed", "err", err, "retry_in", backoff)
			time.Sleep(backoff)
			continue
		}
		backoff = 0
		select {
		case t.handshakes <- struct{}{}:
		default:
			t.logs.warn(t.log, "too many pending handshakes; dropping connection", "remote", conn.RemoteAddr().String())
			conn.Close()
			continue
		}
		if !t.track(conn) {
			<-t.handshakes
			conn.Close()
			return
		}
		t.wg.Add(1)
		go t.serveConn(conn)
	}
}

// track registers an incoming connection so Close can close it; it
// reports false after Close.
func (t *Transport) track(conn net.Conn) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed.Load() {
		return false
	}
	t.conns[conn] = struct{}{}
	return true
}

func (t *Transport) untrack(conn net.Conn) {
	t.mu.Lock()
	delete(t.conns, conn)
	t.mu.Unlock()
}

func (t *Transport) hasStream(kind string) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	_, ok := t.streams[kind]
	return ok
}

// serveConn authenticates an incoming connection and serves it.
func (t *Transport) serveConn(conn net.Conn) {
	defer t.wg.Done()
	handedOff := false
	defer func() {
		if !handedOff {
			conn.Close()
			t.untrack(conn)
		}
	}()
	remote := conn.RemoteAddr().String()
	_ = conn.SetDeadline(time.Now().Add(t.cfg.DialTimeout))
	h, err := serverHandshake(conn, t.cfg.Secret, t.cfg.NodeID, t.hasStream)
	<-t.handshakes
	if err != nil {
		if !t.closed.Load() {
			t.m.authFailures.Inc()
			t.logs.warn(t.log, "incoming connection failed authentication", "remote", remote, "err", err)
		}
		return
	}
	_ = conn.SetDeadline(time.Time{})
	if h.kind != kindRPC {
		t.mu.Lock()
		l := t.streams[h.kind]
		delete(t.conns, conn)
		t.mu.Unlock()
		if l != nil && l.deliver(conn) {
			handedOff = true
			return
		}
		t.logs.warn(t.log, "stream not accepted", "kind", h.kind, "peer", h.nodeID, "remote", remote)
		return
	}
	t.m.conns.WithLabelValues("in", kindRPC).Inc()
	defer t.m.conns.WithLabelValues("in", kindRPC).Dec()
	sc := &serverConn{
		t:      t,
		conn:   conn,
		peer:   h.nodeID,
		fr:     newFrameReader(conn, conn, t.cfg.MaxFrame, t.cfg.DialTimeout, t.table),
		fw:     newFrameWriter(conn, t.cfg.DialTimeout, t.table),
		active: make(map[uint64]context.CancelFunc),
		sem:    make(chan struct{}, t.cfg.MaxInFlight),
	}
	sc.ctx, sc.cancel = context.WithCancel(t.base)
	err = sc.serve()
	sc.cancel()
	switch {
	case err == nil || t.closed.Load():
	case isFrameError(err):
		var fe *frameError
		errors.As(err, &fe)
		t.m.frameErrors.WithLabelValues(fe.reason).Inc()
		t.logs.warn(t.log, "dropping connection", "peer", h.nodeID, "remote", remote, "reason", err)
	default:
		t.log.Debug("connection ended", "peer", h.nodeID, "remote", remote, "err", err)
	}
}

func isFrameError(err error) bool {
	var fe *frameError
	return errors.As(err, &fe)
}

// serverConn serves the RPC on one authenticated incoming connection.
type serverConn struct {
	t      *Transport
	conn   net.Conn
	peer   string
	fr     *frameReader
	fw     *frameWriter
	ctx    context.Context
	cancel context.CancelFunc
	sem    chan struct{}
	// scratch is the response buffer of inline handlers (reader
	// goroutine only).
	scratch []byte

	mu     sync.Mutex
	active map[uint64]context.CancelFunc
}

// serve reads frames until the connection ends; nil means a clean close.
func (sc *serverConn) serve() error {
	for {
		h, err := sc.fr.readHeader()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		switch h.flags {
		case flagCancel:
			if err := sc.fr.readTrailer(); err != nil {
				return err
			}
			sc.mu.Lock()
			cancel := sc.active[h.id]
			delete(sc.active, h.id)
			sc.mu.Unlock()
			if cancel != nil {
				cancel()
			}
		case flagRequest, flagRequest | flagUnchecked:
			e := (*sc.t.handlers.Load())[h.op]
			var buf *[]byte
			if e.inline() {
				buf = sc.t.bufs.get(int(h.length))
				if err := sc.fr.readPayload(*buf); err != nil {
					sc.t.bufs.put(buf)
					return err
				}
				done, err := sc.inline(h, e, *buf)
				if done || err != nil {
					sc.t.bufs.put(buf)
					if err != nil {
						return err
					}
					continue
				}
			}
			select {
			case sc.sem <- struct{}{}:
			case <-sc.ctx.Done():
				if buf != nil {
					sc.t.bufs.put(buf)
				}
				return nil
			}
			if buf == nil {
				buf = sc.t.bufs.get(int(h.length))
				if err := sc.fr.readPayload(*buf); err != nil {
					sc.t.bufs.put(buf)
					<-sc.sem
					return err
				}
			}
			var ctx context.Context
			var cancel context.CancelFunc
			if h.deadline != 0 {
				ctx, cancel = context.WithDeadline(sc.ctx, time.Unix(0, h.deadline))
			} else {
				ctx, cancel = context.WithCancel(sc.ctx)
			}
			sc.mu.Lock()
			_, dup := sc.active[h.id]
			if !dup {
				sc.active[h.id] = cancel
			}
			sc.mu.Unlock()
			if dup {
				cancel()
				sc.t.bufs.put(buf)
				<-sc.sem
				return badFrame("duplicate", "request id %d already in flight", h.id)
			}
			sc.t.handlerWG.Add(1)
			go sc.handle(ctx, cancel, h, e.h, buf)
		default:
			return badFrame("unexpected", "flags 0x%02x from a client", h.flags)
		}
	}
}

// inline runs op's fast handler on the reader goroutine and sends its
// response; done false means the fast path declined (the payload is
// still the caller's). An error is a write failure: the connection is
// finished.
func (sc *serverConn) inline(h header, e handlerEntry, req []byte) (done bool, err error) {
	sc.mu.Lock()
	_, dup := sc.active[h.id]
	sc.mu.Unlock()
	if dup {
		return false, badFrame("duplicate", "request id %d already in flight", h.id)
	}
	if cap(sc.scratch) < e.scratch {
		sc.scratch = make([]byte, e.scratch)
	}
	head, body, token, pinned, ok, herr := sc.t.invokeInline(&e, sc.peer, h.op, req, sc.scratch[:cap(sc.scratch)])
	if !ok {
		return false, nil
	}
	err = sc.respond(h, herr, head, body)
	if pinned {
		e.release(token)
	}
	if err != nil {
		sc.conn.Close()
		return true, err
	}
	return true, nil
}

func (sc *serverConn) handle(ctx context.Context, cancel context.CancelFunc, h header, hf Handler, buf *[]byte) {
	defer sc.t.handlerWG.Done()
	defer func() { <-sc.sem }()
	defer cancel()
	var resp []byte
	var err error
	if hf == nil {
		err = fmt.Errorf("unknown op 0x%04x", h.op)
	} else {
		resp, err = sc.t.invoke(hf, ctx, sc.peer, h.op, *buf)
	}
	sc.t.bufs.put(buf)
	sc.mu.Lock()
	_, live := sc.active[h.id]
	delete(sc.active, h.id)
	sc.mu.Unlock()
	if !live {
		return // cancelled by the caller: nobody waits for the answer
	}
	if err := sc.respond(h, err, resp); err != nil {
		// The reader notices the broken connection too; closing it makes
		// sure a half-written frame is never followed by another.
		sc.conn.Close()
	}
}

// respond sends the response to request h: the concatenation of resp,
// or err as an error response. A request that asked for it
// (flagUnchecked) gets its payload without the frame CRC; error responses
// are always checked in full.
func (sc *serverConn) respond(h header, err error, resp ...[]byte) error {
	n := 0
	for _, b := range resp {
		n += len(b)
	}
	if err == nil && n > sc.t.cfg.MaxFrame {
		err = fmt.Errorf("response of %d bytes exceeds MaxFrame %d", n, sc.t.cfg.MaxFrame)
	}
	out := header{op: h.op, id: h.id, flags: flagResponse}
	if err != nil {
		out.flags |= flagError
		var errno syscall.Errno
		var eb [4]byte
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			binary.LittleEndian.PutUint32(eb[:], codeDeadline)
		case errors.Is(err, context.Canceled):
			binary.LittleEndian.PutUint32(eb[:], codeCanceled)
		case errors.As(err, &errno):
			binary.LittleEndian.PutUint32(eb[:], uint32(errno))
		}
		msg := err.Error()
		if len(msg) > maxErrorMessage {
			msg = msg[:maxErrorMessage]
		}
		return sc.fw.write(out, eb[:], []byte(msg))
	}
	if h.flags&flagUnchecked != 0 {
		out.flags |= flagUnchecked
	}
	return sc.fw.write(out, resp...)
}

// decodeRemoteError decodes an error response payload.
func decodeRemoteError(b []byte) *RemoteError {
	if len(b) < 4 {
		return &RemoteError{Message: "malformed error response"}
	}
	return &RemoteError{Errno: binary.LittleEndian.Uint32(b), Message: string(b[4:])}
}
