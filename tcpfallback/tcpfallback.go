// Package tcpfallback is the node-to-node transport over TCP: an
// authenticated, framed, multiplexed RPC (metadata forwarding, cluster
// membership, page locations and, without RDMA, page data) and raw
// authenticated streams (the Raft transport) on one listening port.
//
// It moves bytes and knows nothing of files, inodes or cache policy: the
// packages that serve requests register handlers by op code.
package tcpfallback

import (
	"context"
	"errors"
	"log/slog"
	"net"
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
// knowing this package.
type RemoteError struct {
	Errno   uint32
	Message string
}

func (e *RemoteError) Error() string { return "remote: " + e.Message }

// Unwrap returns the errno, or nil.
func (e *RemoteError) Unwrap() error {
	if e.Errno == 0 {
		return nil
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

// Transport serves and calls RPCs and streams. Safe for concurrent use.
type Transport struct {
	cfg Config
}

// New starts a transport; with cfg.Listen set it accepts connections at
// once (handlers registered later answer requests that arrive after
// registration; earlier ones get an "unknown op" error).
func New(ctx context.Context, cfg Config) (*Transport, error) {
	panic("tcpfallback.New: not implemented")
}

// Addr returns the advertised address ("" for a client-only transport).
func (t *Transport) Addr() string { panic("not implemented") }

// Handle registers the handler for op. Registering an op twice panics
// (a programming error).
func (t *Transport) Handle(op uint16, h Handler) { panic("not implemented") }

// Call sends a request to the node at addr and waits for the response,
// until ctx ends. Connections are persistent, multiplexed and reconnected
// with back-off. The deadline of ctx travels with the request so the peer
// stops working on it when the caller has given up.
func (t *Transport) Call(ctx context.Context, addr string, op uint16, req []byte) ([]byte, error) {
	panic("not implemented")
}

// ListenStream returns a listener of incoming authenticated raw streams of
// the given kind (e.g. "raft"), multiplexed on this transport's port. Its
// Addr is the advertised address. Listening twice on one kind is an error.
func (t *Transport) ListenStream(kind string) (net.Listener, error) { panic("not implemented") }

// DialStream opens an authenticated raw stream of the given kind to addr,
// until ctx ends. hashicorp/raft's StreamLayer is ListenStream plus
// DialStream (the meta package adapts it).
func (t *Transport) DialStream(ctx context.Context, kind, addr string) (net.Conn, error) {
	panic("not implemented")
}

// Close stops serving, closes every connection and fails calls in flight
// with ErrClosed.
func (t *Transport) Close() error { panic("not implemented") }
