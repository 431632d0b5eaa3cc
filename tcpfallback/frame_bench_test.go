package tcpfallback

import (
	"fmt"
	"hash/crc32"
	"net"
	"testing"
	"time"
)

// The frame hot path: encoding and validating a header, and a whole frame
// written by a frameWriter and read back by a frameReader (header
// validation, payload copy and CRC-32C at both ends), without sockets.
// Steady state must allocate nothing per frame.

// BenchmarkFrameHeaderEncode encodes one 32-byte frame header.
func BenchmarkFrameHeaderEncode(b *testing.B) {
	var buf [headerSize]byte
	h := header{op: 0x0200, id: 1, flags: flagRequest, deadline: time.Now().UnixNano(), length: 64 << 10}
	b.ReportAllocs()
	for b.Loop() {
		h.id++
		h.encode(buf[:])
	}
}

// BenchmarkFrameHeaderDecode validates and decodes one frame header.
func BenchmarkFrameHeaderDecode(b *testing.B) {
	var buf [headerSize]byte
	h := header{op: 0x0200, id: 1, flags: flagResponse, length: 64 << 10}
	h.encode(buf[:])
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeHeader(buf[:], 16<<20); err != nil {
			b.Fatal(err)
		}
	}
}

// discardConn is a net.Conn whose writes go nowhere but into a byte count.
type discardConn struct {
	net.Conn
	n int
}

func (c *discardConn) Write(p []byte) (int, error)      { c.n += len(p); return len(p), nil }
func (c *discardConn) SetWriteDeadline(time.Time) error { return nil }

// loopReader replays one encoded frame forever.
type loopReader struct {
	frame []byte
	off   int
}

func (r *loopReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.frame[r.off:])
		n += c
		r.off = (r.off + c) % len(r.frame)
	}
	return n, nil
}

// captureConn records the bytes of one frame written to it.
type captureConn struct {
	net.Conn
	b []byte
}

func (c *captureConn) Write(p []byte) (int, error)      { c.b = append(c.b, p...); return len(p), nil }
func (c *captureConn) SetWriteDeadline(time.Time) error { return nil }

// BenchmarkFrameWrite encodes a whole response frame of a page (header,
// payload, CRC-32C trailer) into a discarding connection: the small-frame
// path copies, the large one uses writev.
func BenchmarkFrameWrite(b *testing.B) {
	table := crc32.MakeTable(crc32.Castagnoli)
	for _, size := range []int{4 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			conn := &discardConn{}
			w := newFrameWriter(conn, time.Minute, table)
			payload := make([]byte, size)
			h := header{op: 0x0200, flags: flagResponse}
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				h.id++
				if err := w.write(h, payload); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkFrameRead reads and verifies a whole frame of a page (header
// validation, payload copy into the caller's buffer, CRC-32C trailer).
func BenchmarkFrameRead(b *testing.B) {
	table := crc32.MakeTable(crc32.Castagnoli)
	for _, size := range []int{4 << 10, 64 << 10} {
		b.Run(fmt.Sprintf("%dKiB", size>>10), func(b *testing.B) {
			capt := &captureConn{}
			if err := newFrameWriter(capt, time.Minute, table).write(header{op: 0x0200, id: 7, flags: flagRequest}, make([]byte, size)); err != nil {
				b.Fatal(err)
			}
			r := newFrameReader(nil, &loopReader{frame: capt.b}, 16<<20, time.Minute, table)
			dst := make([]byte, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				h, err := r.readHeader()
				if err != nil {
					b.Fatal(err)
				}
				if err := r.readPayload(dst[:h.length]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
