package pingpong

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
)

func TestServeAnswersRequestedSize(t *testing.T) {
	addr, stop, err := Serve(64 << 10)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tests := []struct{ ask, want int }{{0, 0}, {1, 1}, {4096, 4096}, {64 << 10, 64 << 10}, {1 << 20, 64 << 10}}
	for _, tc := range tests {
		var req [RequestSize]byte
		binary.LittleEndian.PutUint32(req[:], uint32(tc.ask))
		if _, err := c.Write(req[:]); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, tc.want)
		if _, err := io.ReadFull(c, got); err != nil {
			t.Fatalf("ask %d: %v", tc.ask, err)
		}
	}
	// Nothing more than asked: the next request's answer starts cleanly.
	var req [RequestSize]byte
	binary.LittleEndian.PutUint32(req[:], 3)
	if _, err := c.Write(req[:]); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 3)
	if _, err := io.ReadFull(c, got); err != nil || got[1] != 7 || got[2] != 14 {
		t.Fatalf("answer %v, %v", got, err)
	}
}
