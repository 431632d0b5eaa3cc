package tcpfallback

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Frame layout constants; see the package doc for the drawing.
const (
	frameMagic  = 0xDA7E
	headerSize  = 32
	trailerSize = 4

	flagRequest  = 1 << 0
	flagResponse = 1 << 1
	flagError    = 1 << 2
	flagCancel   = 1 << 3
	// flagUnchecked on a request: the caller verifies the response
	// payload end to end itself (it carries its own checksum), so the
	// response may omit the frame CRC over its payload. On a response
	// (only with flagResponse, never with flagError): the trailer is the
	// CRC of the header alone. Requests, cancels and error responses are
	// always checked in full.
	flagUnchecked = 1 << 4

	// smallFrame is the largest payload copied next to its header into
	// one write; larger payloads go out with writev, uncopied.
	smallFrame = 16 << 10
	// minRate is the slowest transfer a peer may have once a frame has
	// started (bytes per second), on top of the base frame timeout: it
	// keeps a byte-a-second sender from pinning a connection forever.
	minRate = 1 << 20
	// maxErrorMessage bounds the text of an error response.
	maxErrorMessage = 8 << 10
	// maxPooledBuf is the largest buffer returned to the pool.
	maxPooledBuf = 1 << 20
)

// header is a decoded frame header.
type header struct {
	op       uint16
	id       uint64
	flags    uint8
	deadline int64 // unix nanoseconds, 0 = none
	length   uint32
}

func (h *header) encode(b []byte) {
	_ = b[headerSize-1]
	binary.LittleEndian.PutUint32(b[0:], h.length+headerSize)
	binary.LittleEndian.PutUint16(b[4:], frameMagic)
	binary.LittleEndian.PutUint16(b[6:], h.op)
	binary.LittleEndian.PutUint64(b[8:], h.id)
	b[16], b[17], b[18], b[19] = h.flags, 0, 0, 0
	binary.LittleEndian.PutUint64(b[20:], uint64(h.deadline))
	binary.LittleEndian.PutUint32(b[28:], h.length)
}

// frameError is a protocol violation by the peer; reason is a short,
// fixed string used as a metric label.
type frameError struct {
	reason string
	detail string
}

func (e *frameError) Error() string { return "bad frame: " + e.reason + ": " + e.detail }

func badFrame(reason, format string, args ...any) error {
	return &frameError{reason: reason, detail: fmt.Sprintf(format, args...)}
}

// decodeHeader validates a header before anything is allocated for it.
func decodeHeader(b []byte, maxFrame int) (header, error) {
	if len(b) < headerSize {
		return header{}, badFrame("truncated", "header of %d bytes", len(b))
	}
	if m := binary.LittleEndian.Uint16(b[4:]); m != frameMagic {
		return header{}, badFrame("magic", "magic 0x%04x", m)
	}
	h := header{
		op:       binary.LittleEndian.Uint16(b[6:]),
		id:       binary.LittleEndian.Uint64(b[8:]),
		flags:    b[16],
		deadline: int64(binary.LittleEndian.Uint64(b[20:])),
		length:   binary.LittleEndian.Uint32(b[28:]),
	}
	if uint64(h.length) > uint64(maxFrame) {
		return header{}, badFrame("oversized", "payload of %d bytes exceeds %d", h.length, maxFrame)
	}
	if total := binary.LittleEndian.Uint32(b[0:]); uint64(total) != uint64(h.length)+headerSize {
		return header{}, badFrame("length", "frame length %d does not match payload length %d", total, h.length)
	}
	if b[17]|b[18]|b[19] != 0 {
		return header{}, badFrame("reserved", "reserved bytes set")
	}
	switch h.flags {
	case flagRequest, flagRequest | flagUnchecked, flagResponse, flagResponse | flagUnchecked, flagResponse | flagError:
	case flagCancel:
		if h.length != 0 {
			return header{}, badFrame("flags", "cancel frame with payload")
		}
	default:
		return header{}, badFrame("flags", "flags 0x%02x", h.flags)
	}
	return h, nil
}

// errWaitEnded: readHeaderBy stopped waiting for a frame (its deadline
// passed or it was interrupted) before any byte of one arrived; the
// connection is intact and the next read may wait again.
var errWaitEnded = errors.New("wait for a frame ended")

// frameReader reads frames from a buffered connection. An idle connection
// may wait forever for the next frame; once a frame's first byte arrives
// the rest must follow within the frame timeout.
//
// The read deadline of the connection is the frameReader's: every socket
// read is preceded by setting the deadline it needs (the wait's in
// readHeaderBy, the frame's in arm), so a deadline left over from an
// earlier frame or wait never matters and is not cleared eagerly.
type frameReader struct {
	conn     net.Conn // for read deadlines; nil when reading from memory
	br       *bufio.Reader
	maxFrame int
	timeout  time.Duration
	armed    bool
	hdr      [headerSize]byte
	trailer  [trailerSize]byte
	crc      uint32
	// unchecked: the current frame's trailer covers the header only.
	unchecked bool
	scratch   []byte
	table     *crc32.Table

	// raw, when the connection exposes its descriptor, reads the end of
	// a payload together with the trailer in one readv (readTail);
	// tailIov, tailN and tailErr are readTail's, held here so that the
	// read allocates nothing; tailHave counts trailer bytes it read.
	raw      syscall.RawConn
	rawRead  func(fd uintptr) bool
	tailIov  [2]unix.Iovec
	tailN    int
	tailErr  error
	tailHave int

	// dlMu guards waiting and, while waiting, dl: interrupt may run on
	// another goroutine.
	dlMu    sync.Mutex
	waiting bool      // in an interruptible wait for a frame's first byte
	dl      time.Time // the read deadline last set on conn
}

func newFrameReader(conn net.Conn, r io.Reader, maxFrame int, timeout time.Duration, table *crc32.Table) *frameReader {
	fr := &frameReader{conn: conn, br: bufio.NewReaderSize(r, 32<<10), maxFrame: maxFrame, timeout: timeout, table: table}
	if sc, ok := conn.(syscall.Conn); ok && conn == r {
		if raw, err := sc.SyscallConn(); err == nil {
			fr.raw = raw
			fr.rawRead = fr.readvOnce
		}
	}
	return fr
}

// readvOnce is the RawConn.Read callback of readTail: one readv into
// tailIov; false (wait for data) on EAGAIN.
func (r *frameReader) readvOnce(fd uintptr) bool {
	for {
		n, _, errno := unix.Syscall(unix.SYS_READV, fd, uintptr(unsafe.Pointer(&r.tailIov[0])), uintptr(len(r.tailIov)))
		switch errno {
		case 0:
			r.tailN, r.tailErr = int(n), nil
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		r.tailN, r.tailErr = 0, errno
		return true
	}
}

// readTail reads into body and the rest of the trailer with one readv
// straight from the socket (the buffer must be empty): what arrives of
// the payload's end and its trailer in one system call, where reading
// them through the buffer costs a second call for the trailer's few
// bytes. It returns the body bytes read (trailer bytes are counted in
// tailHave).
func (r *frameReader) readTail(body []byte) (int, error) {
	t := r.trailer[r.tailHave:]
	r.tailIov[0].Base, r.tailIov[0].Len = unsafe.SliceData(body), uint64(len(body))
	r.tailIov[1].Base, r.tailIov[1].Len = unsafe.SliceData(t), uint64(len(t))
	if err := r.raw.Read(r.rawRead); err != nil {
		return 0, err
	}
	r.tailIov = [2]unix.Iovec{} // no stale pointers into the caller's buffer
	if r.tailErr != nil {
		return 0, r.tailErr
	}
	if r.tailN == 0 {
		return 0, io.ErrUnexpectedEOF
	}
	n := min(r.tailN, len(body))
	r.tailHave += r.tailN - n
	return n, nil
}

// setDeadline sets the connection's read deadline unless it is set
// already.
func (r *frameReader) setDeadline(t time.Time) {
	if r.conn == nil || t.Equal(r.dl) {
		return
	}
	r.dl = t
	_ = r.conn.SetReadDeadline(t)
}

// arm starts the frame timeout once a frame has begun and its bytes are
// not all buffered yet.
func (r *frameReader) arm(payload uint32) {
	if r.armed || r.conn == nil {
		return
	}
	r.armed = true
	d := r.timeout + time.Duration(payload)*time.Second/minRate
	r.setDeadline(time.Now().Add(d))
}

// disarm ends the frame timeout; the deadline itself stays on the
// connection until the next read sets its own (see frameReader).
func (r *frameReader) disarm() { r.armed = false }

// interrupt ends an interruptible wait of readHeaderBy in progress (it
// then returns errWaitEnded); at any other time it does nothing, so it
// never cuts a frame short. Safe to call from any goroutine.
func (r *frameReader) interrupt() {
	r.dlMu.Lock()
	if r.waiting {
		r.dl = time.Unix(1, 0)
		_ = r.conn.SetReadDeadline(r.dl)
	}
	r.dlMu.Unlock()
}

// readHeader waits for the next frame and decodes its header. io.EOF means
// the peer closed cleanly between frames.
func (r *frameReader) readHeader() (header, error) {
	return r.readHeaderBy(time.Time{}, false)
}

// readHeaderBy is readHeader waiting for the frame's first byte until
// deadline at most (zero: no limit) and, when interruptible, until
// interrupt is called: then it returns errWaitEnded, nothing consumed.
// Once the first byte has arrived only the frame timeout applies.
func (r *frameReader) readHeaderBy(deadline time.Time, interruptible bool) (header, error) {
	if r.br.Buffered() == 0 && r.conn != nil {
		if interruptible {
			r.dlMu.Lock()
			r.waiting = true
			r.setDeadline(deadline)
			r.dlMu.Unlock()
		} else {
			r.setDeadline(deadline)
		}
		_, err := r.br.Peek(1)
		if interruptible {
			r.dlMu.Lock()
			r.waiting = false
			r.dlMu.Unlock()
		}
		if err != nil {
			if (interruptible || !deadline.IsZero()) && errors.Is(err, os.ErrDeadlineExceeded) {
				return header{}, errWaitEnded
			}
			return header{}, err
		}
	} else if _, err := r.br.Peek(1); err != nil {
		return header{}, err
	}
	if r.br.Buffered() < headerSize {
		r.arm(0)
	}
	if _, err := io.ReadFull(r.br, r.hdr[:]); err != nil {
		return header{}, midFrame(err)
	}
	h, err := decodeHeader(r.hdr[:], r.maxFrame)
	if err != nil {
		return header{}, err
	}
	if r.br.Buffered() < int(h.length)+trailerSize {
		r.arm(h.length)
	}
	r.crc = crc32.Update(0, r.table, r.hdr[:])
	r.unchecked = h.flags == flagResponse|flagUnchecked
	return h, nil
}

// readPayload reads h's payload into dst (len(dst) == h.length) and checks
// the CRC (of the header alone for an unchecked response, whose receiver
// verifies the payload itself).
func (r *frameReader) readPayload(dst []byte) error {
	return r.readPayload2(dst, nil)
}

// readPayload2 is readPayload scattering the payload over head then body
// (len(head)+len(body) == h.length).
func (r *frameReader) readPayload2(head, body []byte) error {
	for _, b := range [2][]byte{head, body} {
		if len(b) == 0 {
			continue
		}
		if _, err := io.ReadFull(r.br, b); err != nil {
			return midFrame(err)
		}
		if !r.unchecked {
			r.crc = crc32.Update(r.crc, r.table, b)
		}
	}
	return r.readTrailer()
}

// sumChunk bounds one socket read of readPayloadSum: the CRC of a chunk
// runs while the peer's next bytes are still arriving, on data still in
// the cache.
const sumChunk = 64 << 10

// readPayloadSum is readPayload2 that also returns the CRC-32C of body,
// computed chunk by chunk as the bytes land in body (the very bytes the
// caller gets), overlapping the hashing with the transfer.
func (r *frameReader) readPayloadSum(head, body []byte) (uint32, error) {
	if len(head) > 0 {
		if _, err := io.ReadFull(r.br, head); err != nil {
			return 0, midFrame(err)
		}
		if !r.unchecked {
			r.crc = crc32.Update(r.crc, r.table, head)
		}
	}
	var sum uint32
	for off := 0; off < len(body); {
		var n int
		var err error
		if rest := len(body) - off; r.raw != nil && r.br.Buffered() == 0 && rest <= sumChunk && rest >= r.br.Size() {
			n, err = r.readTail(body[off:])
		} else {
			n, err = r.br.Read(body[off:min(off+sumChunk, len(body))])
		}
		if n > 0 {
			b := body[off : off+n]
			sum = crc32.Update(sum, r.table, b)
			if !r.unchecked {
				r.crc = crc32.Update(r.crc, r.table, b)
			}
			off += n
		}
		if err != nil && off < len(body) {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return 0, midFrame(err)
		}
	}
	return sum, r.readTrailer()
}

// discardPayload skips h's payload, still checking the CRC.
func (r *frameReader) discardPayload(n uint32) error {
	for n > 0 {
		chunk := min(int(n), r.br.Size())
		b, err := r.br.Peek(chunk)
		if len(b) == 0 && err != nil {
			return midFrame(err)
		}
		if len(b) > chunk {
			b = b[:chunk]
		}
		if !r.unchecked {
			r.crc = crc32.Update(r.crc, r.table, b)
		}
		_, _ = r.br.Discard(len(b))
		n -= uint32(len(b))
	}
	return r.readTrailer()
}

func (r *frameReader) readTrailer() error {
	// r.trailer, not a local array: a local escapes through io.ReadFull
	// and would cost an allocation per frame. readTail may have read
	// some (or all) of it.
	have := r.tailHave
	r.tailHave = 0
	if _, err := io.ReadFull(r.br, r.trailer[have:]); err != nil {
		return midFrame(err)
	}
	r.disarm()
	if got := binary.LittleEndian.Uint32(r.trailer[:]); got != r.crc {
		return badFrame("crc", "crc 0x%08x, computed 0x%08x", got, r.crc)
	}
	return nil
}

// midFrame classifies a read error inside a frame: the peer stopped or
// stalled half-way, which is a protocol violation, not a clean close.
func midFrame(err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return badFrame("truncated", "connection ended inside a frame")
	case errors.As(err, &ne) && ne.Timeout():
		return badFrame("timeout", "frame not completed in time")
	}
	return err
}

// frameWriter serialises frame writes on one connection. Every write has
// a deadline, so a peer that stops reading cannot block writers forever.
type frameWriter struct {
	mu       sync.Mutex
	conn     net.Conn
	timeout  time.Duration
	deadline time.Time
	err      error
	table    *crc32.Table
	buf      []byte
	trailer  [trailerSize]byte
	bufs     net.Buffers
	sending  net.Buffers
}

func newFrameWriter(conn net.Conn, timeout time.Duration, table *crc32.Table) *frameWriter {
	return &frameWriter{conn: conn, timeout: timeout, table: table, buf: make([]byte, headerSize+smallFrame+trailerSize)}
}

// write sends one frame; after a failed write the connection is unusable
// and every later write returns the same error.
func (w *frameWriter) write(h header, payload ...[]byte) error {
	n := 0
	for _, p := range payload {
		n += len(p)
	}
	h.length = uint32(n)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return w.err
	}
	now := time.Now()
	if need := w.timeout + time.Duration(n)*time.Second/minRate; w.deadline.Sub(now) < need {
		w.deadline = now.Add(2 * need)
		_ = w.conn.SetWriteDeadline(w.deadline)
	}
	var err error
	if n <= smallFrame {
		b := w.buf[:headerSize+n+trailerSize]
		h.encode(b)
		off := headerSize
		for _, p := range payload {
			off += copy(b[off:], p)
		}
		covered := b[:off]
		if h.flags == flagResponse|flagUnchecked {
			covered = b[:headerSize]
		}
		binary.LittleEndian.PutUint32(b[off:], crc32.Checksum(covered, w.table))
		_, err = w.conn.Write(b)
	} else {
		hdr := w.buf[:headerSize]
		h.encode(hdr)
		crc := crc32.Update(0, w.table, hdr)
		w.bufs = append(w.bufs[:0], hdr)
		for _, p := range payload {
			if h.flags != flagResponse|flagUnchecked {
				crc = crc32.Update(crc, w.table, p)
			}
			w.bufs = append(w.bufs, p)
		}
		binary.LittleEndian.PutUint32(w.trailer[:], crc)
		w.bufs = append(w.bufs, w.trailer[:])
		// WriteTo consumes its receiver: write from w.sending, a field
		// (a local copy would escape to the heap, an allocation per
		// frame), and keep w.bufs to clear below.
		w.sending = w.bufs
		_, err = w.sending.WriteTo(w.conn)
		w.sending = nil
		clear(w.bufs) // do not pin the caller's payload
	}
	if err != nil {
		w.err = fmt.Errorf("write frame: %w", err)
		return w.err
	}
	return nil
}

// bufPool recycles request payload buffers.
type bufPool struct{ p sync.Pool }

func (bp *bufPool) get(n int) *[]byte {
	if v, ok := bp.p.Get().(*[]byte); ok {
		if cap(*v) >= n {
			*v = (*v)[:n]
			return v
		}
		bp.p.Put(v)
	}
	c := 4 << 10
	for c < n {
		c <<= 1
	}
	b := make([]byte, n, c)
	return &b
}

func (bp *bufPool) put(b *[]byte) {
	if cap(*b) <= maxPooledBuf {
		bp.p.Put(b)
	}
}
