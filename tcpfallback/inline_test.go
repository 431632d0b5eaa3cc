package tcpfallback

import (
	"context"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"net"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

const (
	opInline = 0x0110 // fast path: "page" of req[0] bytes of req[1]; declines when req[0] == 0
)

func registerInline(tr *Transport, slow *atomic.Int64) {
	tr.HandleInline(opInline, 1<<10, func(_ string, req, dst []byte) ([]byte, bool) {
		if len(req) < 2 || req[0] == 0 {
			return nil, false
		}
		if req[0] == 0xff {
			panic("inline boom")
		}
		out := dst[:req[0]]
		for i := range out {
			out[i] = req[1]
		}
		return out, true
	}, func(_ context.Context, _ string, req []byte) ([]byte, error) {
		slow.Add(1)
		return []byte("slow path"), nil
	})
}

func TestInlineHandlerAndSplitCall(t *testing.T) {
	srv := newNode(t, "server", nil)
	var slow atomic.Int64
	registerInline(srv.Transport, &slow)
	registerBasic(srv.Transport)
	cli := newNode(t, "client", nil)
	ctx := context.Background()

	// Fast path, plain call.
	resp, err := cli.Call(ctx, srv.Addr(), opInline, []byte{5, 'x'})
	if err != nil || string(resp) != "xxxxx" {
		t.Fatalf("inline call: %q %v", resp, err)
	}
	// Fast path, split call: payload scattered over head and body.
	head, body := make([]byte, 2), make([]byte, 10)
	n, err := cli.CallIntoSplit(ctx, srv.Addr(), opInline, []byte{7, 'y'}, head, body)
	if err != nil || n != 7 || string(head) != "yy" || string(body[:5]) != "yyyyy" {
		t.Fatalf("split call: n %d head %q body %q err %v", n, head, body, err)
	}
	// Shorter than head.
	n, err = cli.CallIntoSplit(ctx, srv.Addr(), opInline, []byte{1, 'z'}, head, body)
	if err != nil || n != 1 || head[0] != 'z' {
		t.Fatalf("short split call: n %d head %q err %v", n, head, err)
	}
	// Declined: the slow handler answers, on its own goroutine.
	resp, err = cli.Call(ctx, srv.Addr(), opInline, []byte{0, 0})
	if err != nil || string(resp) != "slow path" || slow.Load() != 1 {
		t.Fatalf("declined inline call: %q %v (slow %d)", resp, err, slow.Load())
	}
	// A panic in the fast path is an error response, the connection lives.
	_, err = cli.Call(ctx, srv.Addr(), opInline, []byte{0xff, 0})
	var re *RemoteError
	if !errors.As(err, &re) || !strings.Contains(re.Message, "panicked") {
		t.Fatalf("inline panic: %v", err)
	}
	// Too long for the caller's buffers: the call fails, the connection
	// stays usable.
	_, err = cli.CallIntoSplit(ctx, srv.Addr(), opInline, []byte{20, 'q'}, head, body)
	if err == nil || !strings.Contains(err.Error(), "exceeds") {
		t.Fatalf("oversized split response: %v", err)
	}
	// Split calls to ordinary handlers, errors included.
	n, err = cli.CallIntoSplit(ctx, srv.Addr(), opEcho, []byte("hello world"), head, body)
	if err != nil || n != 11 || string(head)+string(body[:9]) != "hello world" {
		t.Fatalf("split echo: n %d %q%q %v", n, head, body, err)
	}
	if _, err = cli.CallIntoSplit(ctx, srv.Addr(), opErrno, nil, head, body); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("split errno: %v", err)
	}
	resp, err = cli.Call(ctx, srv.Addr(), opInline, []byte{3, 'k'})
	if err != nil || string(resp) != "kkk" {
		t.Fatalf("after errors: %q %v", resp, err)
	}
}

// TestUncheckedResponseOnlyWhenAsked: a server answers a request that
// asked for it without the payload CRC (the trailer covers the header),
// and a client drops a connection whose server sends an unchecked
// response to a request that did not ask.
func TestUncheckedResponseOnlyWhenAsked(t *testing.T) {
	srv := newNode(t, "server", nil)
	registerBasic(srv.Transport)
	table := crc32.MakeTable(crc32.Castagnoli)
	for _, unchecked := range []bool{false, true} {
		c, err := authRaw(t, srv.Addr(), testSecret, kindRPC)
		if err != nil {
			t.Fatal(err)
		}
		h := header{op: opEcho, id: 1, flags: flagRequest}
		if unchecked {
			h.flags |= flagUnchecked
		}
		if _, err := c.Write(encodeFrame(h, []byte("payload"))); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, headerSize+len("payload")+trailerSize)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		got, err := decodeHeader(b, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		covered, wantFlags := b[:headerSize+len("payload")], uint8(flagResponse)
		if unchecked {
			covered, wantFlags = b[:headerSize], flagResponse|flagUnchecked
		}
		if got.flags != wantFlags || binary.LittleEndian.Uint32(b[len(b)-trailerSize:]) != crc32.Checksum(covered, table) {
			t.Fatalf("unchecked %v: flags 0x%02x, trailer 0x%08x", unchecked, got.flags, binary.LittleEndian.Uint32(b[len(b)-trailerSize:]))
		}
	}

	// A rogue server: valid handshake, then an unchecked response to a
	// checked request.
	addr := serveOne(t, func(c net.Conn) {
		if _, err := serverHandshake(c, testSecret, "rogue", func(string) bool { return false }); err != nil {
			return
		}
		var hdr [headerSize]byte
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			return
		}
		h, _ := decodeHeader(hdr[:], 1<<20)
		if _, err := io.CopyN(io.Discard, c, int64(h.length)+trailerSize); err != nil {
			return
		}
		_, _ = c.Write(encodeUncheckedFrame(header{op: h.op, id: h.id, flags: flagResponse | flagUnchecked}, []byte("forged")))
		_, _ = io.Copy(io.Discard, c)
	})
	cli := newNode(t, "client", nil)
	_, err := cli.Call(context.Background(), addr, opEcho, []byte("x"))
	if err == nil || !strings.Contains(err.Error(), "unchecked response to a checked request") {
		t.Fatalf("unchecked response to a checked call: %v", err)
	}
	if v := metricValue(t, cli.reg, "datenlord_transport_frame_errors_total", map[string]string{"reason": "unexpected"}); v != 1 {
		t.Fatalf("frame errors{unexpected} = %v, want 1", v)
	}
}

// serveOne listens on 127.0.0.1, runs serve on the first connection it
// accepts (closing it afterwards) and returns the address; the listener
// closes when the test ends.
func serveOne(t *testing.T, serve func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		serve(c)
	}()
	return ln.Addr().String()
}
