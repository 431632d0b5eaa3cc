package tcpfallback

import (
	"bytes"
	"hash/crc32"
	"net"
	"strings"
	"testing"
	"time"
)

// TestReadTailOverTCP reads split responses over a real socket, the
// frame's bytes arriving in pieces: the end of the payload and its
// trailer are read with one readv (readTail) when the buffer is empty,
// the trailer may arrive whole, in part or late, and a corrupt trailer
// or a connection that ends inside the trailer is an error, never a
// frame.
func TestReadTailOverTCP(t *testing.T) {
	table := crc32.MakeTable(crc32.Castagnoli)
	body := make([]byte, 64<<10)
	for i := range body {
		body[i] = byte(i*13 + i>>9)
	}
	capt := &captureConn{}
	if err := newFrameWriter(capt, time.Minute, table).write(header{op: 0x0201, id: 9, flags: flagResponse}, make([]byte, 4), body); err != nil {
		t.Fatal(err)
	}
	frame := capt.b
	end := len(frame) - trailerSize
	corrupt := bytes.Clone(frame)
	corrupt[len(corrupt)-1] ^= 0xff
	for _, tc := range []struct {
		name   string
		frame  []byte
		splits []int // write boundaries (offsets into the frame)
		close  bool  // close after the last piece
		want   string
	}{
		{name: "whole", frame: frame},
		{name: "header, then the rest", frame: frame, splits: []int{headerSize}},
		{name: "trailer apart", frame: frame, splits: []int{40 << 10, end}},
		{name: "trailer in two", frame: frame, splits: []int{40 << 10, end + 1, end + 3}},
		{name: "payload in pieces", frame: frame, splits: []int{1000, 33 << 10, 50 << 10, end - 1}},
		{name: "corrupt trailer", frame: corrupt, splits: []int{40 << 10}, want: "crc"},
		{name: "ends inside the trailer", frame: frame[:end+2], splits: []int{40 << 10}, close: true, want: "truncated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := serveOne(t, func(c net.Conn) {
				prev := 0
				for _, at := range append(tc.splits, len(tc.frame)) {
					if _, err := c.Write(tc.frame[prev:at]); err != nil {
						return
					}
					prev = at
					time.Sleep(5 * time.Millisecond)
				}
				if !tc.close {
					time.Sleep(time.Second) // the reader must not need EOF
				}
			})
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			r := newFrameReader(conn, conn, 1<<20, 5*time.Second, table)
			if r.raw == nil {
				t.Fatal("a TCP connection without the raw read path")
			}
			h, err := r.readHeader()
			if err != nil {
				t.Fatal(err)
			}
			head, got := make([]byte, 4), make([]byte, int(h.length)-4)
			sum, err := r.readPayloadSum(head, got)
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("err %v, want one about %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, body) || sum != crc32.Checksum(body, table) {
				t.Fatal("wrong payload or payload sum")
			}
			if r.tailHave != 0 {
				t.Errorf("tailHave %d after the frame", r.tailHave)
			}
		})
	}
}
