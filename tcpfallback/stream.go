package tcpfallback

import (
	"fmt"
	"net"
	"sync"
	"time"
)

// streamListener is the net.Listener of one stream kind.
type streamListener struct {
	t         *Transport
	kind      string
	ch        chan net.Conn
	done      chan struct{}
	closeOnce sync.Once
}

var _ net.Listener = (*streamListener)(nil)

// Accept returns the next authenticated stream of this kind; after Close
// it returns an error wrapping net.ErrClosed.
func (l *streamListener) Accept() (net.Conn, error) {
	select {
	case <-l.done:
		return nil, fmt.Errorf("accept %s stream: %w", l.kind, net.ErrClosed)
	default:
	}
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, fmt.Errorf("accept %s stream: %w", l.kind, net.ErrClosed)
	}
}

// Close stops the listener (not the transport) and closes streams not yet
// accepted.
func (l *streamListener) Close() error {
	l.closeOnce.Do(func() {
		close(l.done)
		l.t.mu.Lock()
		if l.t.streams[l.kind] == l {
			delete(l.t.streams, l.kind)
		}
		l.t.mu.Unlock()
		l.drain()
	})
	return nil
}

// Addr is the transport's advertised address.
func (l *streamListener) Addr() net.Addr { return streamAddr(l.t.addr) }

func (l *streamListener) drain() {
	for {
		select {
		case c := <-l.ch:
			c.Close()
		default:
			return
		}
	}
}

// deliver queues an authenticated stream for Accept; it gives up when the
// listener closes or nobody accepts within DialTimeout.
func (l *streamListener) deliver(c net.Conn) bool {
	timer := time.NewTimer(l.t.cfg.DialTimeout)
	defer timer.Stop()
	select {
	case l.ch <- c:
		select {
		case <-l.done:
			l.drain() // Close may have drained before we queued
		default:
		}
		return true
	case <-l.done:
	case <-timer.C:
	}
	c.Close()
	return false
}

// streamAddr is a net.Addr for an advertised "host:port".
type streamAddr string

func (a streamAddr) Network() string { return "tcp" }
func (a streamAddr) String() string  { return string(a) }
