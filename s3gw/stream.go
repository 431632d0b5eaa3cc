package s3gw

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/datenlord/datenlord-go/fs"
)

const (
	// sendBatch is how many bytes of a body are gathered (pages pinned,
	// misses copied) and written with one writev: 16 pages of 64 KiB. It
	// bounds the pages a response keeps pinned.
	sendBatch = 1 << 20
	// sendSpans is the spans a batch holds without growing (a batch of
	// 4 KiB pages can need more; the slice then grows once and is kept).
	sendSpans = 32
	// sendStall bounds how long one batch may take to write: a client
	// that accepts nothing for this long loses its connection, so that it
	// cannot keep cache pages pinned (and a goroutine busy) forever.
	sendStall = time.Minute
)

// newRangeBody returns a recycled rangeBody (Gateway.bodies): a fresh
// megabyte of scratch per GET would be zeroed (and faulted in) every time.
func (g *Gateway) newRangeBody() *rangeBody {
	if b, ok := g.bodies.Get().(*rangeBody); ok {
		return b
	}
	return &rangeBody{scratch: make([]byte, sendBatch), spans: make([]fs.Span, 0, sendSpans), iov: make([][]byte, 0, sendSpans)}
}

// rangeBody is the body of a GET: bytes [off, end) of a file. It is an
// io.WriterTo, so that http's ResponseWriter.ReadFrom hands it the TCP
// connection itself: each batch is written with one writev straight from
// the pinned cache pages (the kernel's copy into the socket is the only
// one), misses and unflushed data from the scratch buffer they were
// copied into. Read serves the few callers that read instead.
type rangeBody struct {
	ctx      context.Context
	rd       *fs.Reader
	off, end uint64
	scratch  []byte
	spans    []fs.Span
	iov      [][]byte
	bufs     net.Buffers // the batch being written (in the struct: no allocation per batch)
	// rc sets the connection's write deadline before each batch.
	rc *http.ResponseController
	// readErr is the error reading the file (not writing the client).
	readErr error
}

// errReadFailed ends a copy whose source failed; the cause is readErr.
var errReadFailed = errors.New("s3gw: reading the object failed")

// WriteTo writes the rest of the range to w. Errors of w (the client went
// away) are returned as they are; a read error is recorded in readErr and
// ends the copy with errReadFailed. A file that shrank under the reader (a
// FUSE truncate) ends it early without error.
func (b *rangeBody) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for b.off < b.end {
		lim := min(uint64(len(b.scratch)), b.end-b.off)
		spans, n, err := b.rd.ReadSpans(b.ctx, b.off, b.scratch[:lim], b.spans[:0])
		b.spans = spans
		if n > 0 {
			iov := b.iov[:0]
			for i := range spans {
				iov = append(iov, spans[i].Data)
			}
			b.iov = iov
			b.bufs = iov
			if b.rc != nil {
				// An unsupported deadline (not a net.Conn) only loses the bound.
				_ = b.rc.SetWriteDeadline(time.Now().Add(sendStall))
			}
			k, werr := b.bufs.WriteTo(w)
			fs.ReleaseSpans(spans)
			clear(iov) // no references to released pages
			total += k
			b.off += uint64(n)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			b.off = b.end
			return total, nil
		}
		if err != nil {
			b.readErr = err
			return total, errReadFailed
		}
	}
	return total, nil
}

// Read reads the range into p (copying).
func (b *rangeBody) Read(p []byte) (int, error) {
	if b.off >= b.end {
		return 0, io.EOF
	}
	n, err := b.rd.ReadAt(b.ctx, p[:min(uint64(len(p)), b.end-b.off)], b.off)
	b.off += uint64(n)
	if err == io.EOF {
		b.off = b.end
		if n > 0 {
			return n, nil
		}
		return 0, io.EOF
	}
	if err != nil {
		b.readErr = err
		return n, errReadFailed
	}
	return n, nil
}

// sendRange writes bytes [off, end) of rd to w after the response header,
// from pinned cache pages where it can (see rangeBody). The caller marks
// rd sequential from off (fs.Reader.ReadAhead), so the blocks ahead load
// with whole-block reads while batches are written. (A reader goroutine
// filling batches ahead of the writer was measured slower on two shared
// cores: the handoffs cost more than the overlap gains when the pages come
// from memory.) An error of the client's connection ends the copy quietly
// (the client went away); a read error is returned (the response has
// started: the client sees a short body), as is a file that shrank under
// the reader (a FUSE truncate), silently.
func (g *Gateway) sendRange(ctx context.Context, w *statusWriter, rd *fs.Reader, off, end uint64) error {
	if end <= off {
		return nil
	}
	b := g.newRangeBody()
	b.ctx, b.rd, b.off, b.end, b.readErr = ctx, rd, off, end, nil
	b.rc = http.NewResponseController(w.ResponseWriter)
	defer func() {
		// The connection may serve further requests: no deadline for them.
		_ = b.rc.SetWriteDeadline(time.Time{})
		b.ctx, b.rd, b.rc = nil, nil, nil
		g.bodies.Put(b)
	}()
	// Send the header first, so that ReadFrom goes straight to the
	// connection rather than copying the first bytes to sniff them.
	w.Flush()
	_, _ = w.ReadFrom(b)
	return b.readErr
}

// ReadFrom copies r to the response through the underlying writer's
// ReadFrom when it has one (net/http's, which hands an io.WriterTo the
// TCP connection), counting the bytes.
func (w *statusWriter) ReadFrom(r io.Reader) (int64, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	var n int64
	var err error
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		n, err = rf.ReadFrom(r)
	} else {
		n, err = io.Copy(writerOnly{w.ResponseWriter}, r)
	}
	w.bytes += n
	return n, err
}

// writerOnly hides every method of a writer but Write (so that io.Copy
// does not recurse into ReadFrom).
type writerOnly struct{ io.Writer }
