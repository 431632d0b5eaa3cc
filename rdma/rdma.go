// Package rdma is a small Go API over libibverbs (rdma-core) for one-sided
// RDMA READs between nodes: device discovery and port/GID query, a
// protection domain per opened device, memory regions over memory that
// the Go runtime does not manage (mmap'd or C-allocated), reliable
// connected queue pairs brought through INIT, RTR and RTS with the peer's
// QPN, PSN and GID (exchanged by the caller over an authenticated control
// connection), batched READs with signalled completions, and teardown.
//
// No C type appears in the API. With cgo disabled (or off Linux) the
// package still builds: Open returns ErrNoRDMA, and callers use TCP.
//
// # Completions
//
// Each QP has its own completion queue and completion channel. There is
// no poller goroutine per operation: a goroutine waiting for its READs
// becomes the QP's poller if nobody else is polling (it spins on the CQ
// for a short while, then sleeps on the completion channel), hands every
// completion it reaps to the batch that owns it, and passes the poller
// role on when its own batch is done. Other waiters sleep on a channel.
//
// # Memory
//
// Registered memory is pinned and handed to the NIC, so it must not be
// memory the Go garbage collector can move or free: use AllocBuffer (an
// anonymous mmap) or another mmap'd region such as the cache arena's
// segments. Pinned memory counts against RLIMIT_MEMLOCK (ulimit -l) for
// processes without CAP_IPC_LOCK; a registration refused for that reason
// returns an error that says so and how to raise the limit.
//
// # Errors
//
// A READ that completes with an error returns a *CompletionError carrying
// the verbs status and its ibv_wc_status_str text; the QP is then in the
// error state and every later Read on it fails with ErrQPBroken (wrapping
// the first cause): the caller makes a new QP.
package rdma

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// ErrNoRDMA is returned by Open when the binary was built without cgo
// (CGO_ENABLED=0) or for a system without libibverbs.
var ErrNoRDMA = errors.New("rdma: not available in this build (built without cgo/libibverbs)")

// ErrNoDevice is returned by Open when no RDMA device (or no device of the
// requested name) exists.
var ErrNoDevice = errors.New("rdma: no RDMA device")

// ErrQPBroken is returned (wrapped with the first cause) by operations on
// a queue pair that went into the error state.
var ErrQPBroken = errors.New("rdma: queue pair is broken")

// ErrNotFlushed is returned (wrapped) when a READ was abandoned and its
// completion did not arrive in time: the NIC may still write the local
// buffer, which the caller must not reuse.
var ErrNotFlushed = errors.New("rdma: READ not flushed; the local buffer may still be written")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("rdma: closed")

// Unavailable reports whether err means RDMA cannot be used on this node at
// all (no support in the build, or no device): callers then use TCP.
func Unavailable(err error) bool {
	return errors.Is(err, ErrNoRDMA) || errors.Is(err, ErrNoDevice)
}

// Work completion status values (enum ibv_wc_status) callers may test
// CompletionError.Status against.
const (
	StatusSuccess            = 0
	StatusLocalLengthError   = 1
	StatusLocalProtError     = 4
	StatusFlushed            = 5
	StatusRemoteInvalidReq   = 9
	StatusRemoteAccessError  = 10
	StatusRemoteOpError      = 11
	StatusRetryExceeded      = 12
	StatusRNRRetryExceeded   = 13
	StatusResponseTimeout    = 19
	StatusGeneralError       = 20
	maxReadLength            = 1 << 30
	defaultMaxOutstanding    = 128
	defaultSpinMicroseconds  = 200
	endpointWireSize         = 28
	ipv4MappedPrefixLen      = 12
	defaultQPTimeoutExponent = 14
)

// CompletionError is a work completion with an error status.
type CompletionError struct {
	// Status is the enum ibv_wc_status value, StatusText its
	// ibv_wc_status_str text.
	Status     int
	StatusText string
	// VendorErr is the provider's vendor error code.
	VendorErr uint32
	// Op describes the operation (e.g. "RDMA READ of 4160 bytes").
	Op string
}

func (e *CompletionError) Error() string {
	return fmt.Sprintf("rdma: %s completed with %s (status %d, vendor error 0x%x)", e.Op, e.StatusText, e.Status, e.VendorErr)
}

// GID is a 16-byte RoCE/InfiniBand global identifier (an IPv6 address for
// RoCE v2; IPv4 addresses appear IPv4-mapped, ::ffff:a.b.c.d).
type GID [16]byte

// String formats the GID as an IPv6 address.
func (g GID) String() string { return net.IP(g[:]).String() }

// IsZero reports whether all bytes are zero.
func (g GID) IsZero() bool { return g == GID{} }

// IPv4 returns the IPv4 address of an IPv4-mapped GID.
func (g GID) IPv4() (net.IP, bool) {
	for i := range 10 {
		if g[i] != 0 {
			return nil, false
		}
	}
	if g[10] != 0xff || g[11] != 0xff {
		return nil, false
	}
	return net.IPv4(g[12], g[13], g[14], g[15]).To4(), true
}

// Endpoint is what a peer needs to connect its queue pair to ours: queue
// pair number, initial packet sequence number, GID and path MTU (bytes).
type Endpoint struct {
	QPN uint32
	PSN uint32
	GID GID
	MTU int
}

// MarshalBinary encodes the endpoint in 28 bytes (little endian):
// qpn u32 | psn u32 | mtu u32 | gid [16].
func (e Endpoint) MarshalBinary() ([]byte, error) {
	b := make([]byte, endpointWireSize)
	binary.LittleEndian.PutUint32(b[0:], e.QPN)
	binary.LittleEndian.PutUint32(b[4:], e.PSN)
	binary.LittleEndian.PutUint32(b[8:], uint32(e.MTU))
	copy(b[12:], e.GID[:])
	return b, nil
}

// UnmarshalBinary decodes what MarshalBinary wrote, checking sizes and
// ranges.
func (e *Endpoint) UnmarshalBinary(b []byte) error {
	if len(b) != endpointWireSize {
		return fmt.Errorf("rdma endpoint: %d bytes, want %d", len(b), endpointWireSize)
	}
	ep := Endpoint{
		QPN: binary.LittleEndian.Uint32(b[0:]),
		PSN: binary.LittleEndian.Uint32(b[4:]),
		MTU: int(binary.LittleEndian.Uint32(b[8:])),
	}
	copy(ep.GID[:], b[12:])
	if ep.QPN == 0 || ep.QPN >= 1<<24 || ep.PSN >= 1<<24 {
		return fmt.Errorf("rdma endpoint: qpn %d or psn %d out of range", ep.QPN, ep.PSN)
	}
	if mtuEnum(ep.MTU) == 0 {
		return fmt.Errorf("rdma endpoint: path MTU %d is not 256, 512, 1024, 2048 or 4096", ep.MTU)
	}
	if ep.GID.IsZero() {
		return errors.New("rdma endpoint: zero GID")
	}
	*e = ep
	return nil
}

// mtuEnum maps an MTU in bytes to enum ibv_mtu (0: invalid).
func mtuEnum(n int) int {
	switch n {
	case 256:
		return 1
	case 512:
		return 2
	case 1024:
		return 3
	case 2048:
		return 4
	case 4096:
		return 5
	}
	return 0
}

// mtuBytes maps enum ibv_mtu to bytes.
func mtuBytes(e int) int {
	if e < 1 || e > 5 {
		return 0
	}
	return 128 << e
}

// Access is a set of memory region access rights.
type Access int

// Access rights of a memory region (IBV_ACCESS_*). Remote access needs
// AccessLocalWrite too (a verbs rule); Register adds it.
const (
	AccessLocalWrite  Access = 1
	AccessRemoteWrite Access = 2
	AccessRemoteRead  Access = 4
)

// Region is a remote memory region as its owner announces it: the
// address the owner registered, its length and the rkey.
type Region struct {
	Addr uint64
	Len  uint64
	RKey uint32
}

// ReadOp is one RDMA READ: Length bytes at RemoteAddr (in the region of
// RKey) into Local at Offset.
type ReadOp struct {
	Local      *MR
	Offset     int
	Length     int
	RemoteAddr uint64
	RKey       uint32
}

// Config selects a device and port for Open.
type Config struct {
	// Device is the device name (e.g. "rxe0"); "" picks the first.
	Device string
	// Port is the port number (0: 1).
	Port int
	// GIDIndex, when > 0, selects that GID index; otherwise the GID is
	// chosen automatically: the IPv4-mapped GID of IP when set, else the
	// first IPv4-mapped GID, else the first non-zero one (RXE.md: the
	// fe80:: GID fails while IPv6 DAD runs and never works on lo).
	GIDIndex int
	// IP, when set, picks the IPv4-mapped GID of this address (the
	// address the control connection uses: RoCE v2 routes by it).
	IP net.IP
}

// QPConfig tunes a queue pair.
type QPConfig struct {
	// MaxOutstanding bounds the READs in flight on the QP (0: 128).
	MaxOutstanding int
	// TimeoutExponent is the local ACK timeout, 4.096 us * 2^n (0: 14,
	// about 67 ms); with RetryCount (0: 7) it bounds how long a READ
	// to a vanished peer takes to fail.
	TimeoutExponent int
	RetryCount      int
	// SpinMicroseconds is how long a waiter busy-polls the CQ before it
	// sleeps on the completion channel (0: 200; negative: never spin).
	SpinMicroseconds int
}

func (c QPConfig) withDefaults() QPConfig {
	if c.MaxOutstanding <= 0 {
		c.MaxOutstanding = defaultMaxOutstanding
	}
	if c.TimeoutExponent <= 0 || c.TimeoutExponent > 31 {
		c.TimeoutExponent = defaultQPTimeoutExponent
	}
	if c.RetryCount <= 0 || c.RetryCount > 7 {
		c.RetryCount = 7
	}
	if c.SpinMicroseconds == 0 {
		c.SpinMicroseconds = defaultSpinMicroseconds
	}
	if c.SpinMicroseconds < 0 {
		c.SpinMicroseconds = 0
	}
	return c
}

// AllocBuffer maps n bytes of anonymous memory outside the Go heap, fit
// for Register. Free it with FreeBuffer after the MR is closed.
func AllocBuffer(n int) ([]byte, error) {
	if n <= 0 {
		return nil, fmt.Errorf("rdma: buffer of %d bytes", n)
	}
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("rdma: mmap %d-byte buffer: %w", n, err)
	}
	return b, nil
}

// FreeBuffer unmaps a buffer from AllocBuffer.
func FreeBuffer(b []byte) error {
	if err := unix.Munmap(b); err != nil {
		return fmt.Errorf("rdma: munmap buffer: %w", err)
	}
	return nil
}

// memlockHint explains a registration refused with ENOMEM when the
// RLIMIT_MEMLOCK soft limit is the likely cause.
func memlockHint(n int, err error) error {
	if !errors.Is(err, unix.ENOMEM) && !errors.Is(err, unix.EPERM) {
		return err
	}
	var lim unix.Rlimit
	if e := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim); e != nil || lim.Cur == unix.RLIM_INFINITY {
		return err
	}
	return fmt.Errorf("%w: the pinned-memory limit (ulimit -l, RLIMIT_MEMLOCK) is %d KiB and registering %d bytes needs more: "+
		"raise it (ulimit -l unlimited, LimitMEMLOCK=infinity in a systemd unit, memlock in /etc/security/limits.conf) or run with CAP_IPC_LOCK",
		err, lim.Cur/1024, n)
}
