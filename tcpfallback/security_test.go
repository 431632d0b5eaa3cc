package tcpfallback

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"io"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// countingServer is a node whose every handler invocation is counted.
func countingServer(t *testing.T, mod func(*Config)) (*testNode, *atomic.Int64) {
	srv := newNode(t, "server", mod)
	var n atomic.Int64
	srv.Handle(opCount, func(context.Context, string, []byte) ([]byte, error) {
		n.Add(1)
		return []byte("secret page"), nil
	})
	return srv, &n
}

// encodeFrame builds a valid frame.
func encodeFrame(h header, payload []byte) []byte {
	h.length = uint32(len(payload))
	b := make([]byte, headerSize+len(payload)+trailerSize)
	h.encode(b)
	copy(b[headerSize:], payload)
	crc := crc32.Checksum(b[:headerSize+len(payload)], crc32.MakeTable(crc32.Castagnoli))
	binary.LittleEndian.PutUint32(b[headerSize+len(payload):], crc)
	return b
}

// encodeUncheckedFrame builds a frame whose trailer covers the header
// only (as an unchecked response does).
func encodeUncheckedFrame(h header, payload []byte) []byte {
	h.length = uint32(len(payload))
	b := make([]byte, headerSize+len(payload)+trailerSize)
	h.encode(b)
	copy(b[headerSize:], payload)
	crc := crc32.Checksum(b[:headerSize], crc32.MakeTable(crc32.Castagnoli))
	binary.LittleEndian.PutUint32(b[headerSize+len(payload):], crc)
	return b
}

// expectClosedSilently reads until EOF and fails if any byte arrives.
func expectClosedSilently(t *testing.T, c net.Conn, allowed int) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		t.Fatalf("read: %v", err)
	}
	if len(got) > allowed {
		t.Fatalf("server sent %d bytes (%q), want at most %d", len(got), got, allowed)
	}
}

func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// authRaw opens a raw connection and authenticates with secret.
func authRaw(t *testing.T, addr string, secret []byte, kind string) (net.Conn, error) {
	c := dialRaw(t, addr)
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err := clientHandshake(c, secret, "raw-client", kind)
	_ = c.SetDeadline(time.Time{})
	return c, err
}

// Acceptance 3 of issue 5: a peer without the secret, or with a wrong
// one, gets nothing.
func TestAuthNoSecretGetsNothing(t *testing.T) {
	srv, handled := countingServer(t, nil)
	request := encodeFrame(header{op: opCount, id: 1, flags: flagRequest}, []byte("give me a page"))

	t.Run("frame without handshake", func(t *testing.T) {
		c := dialRaw(t, srv.Addr())
		_, _ = c.Write(request)
		expectClosedSilently(t, c, 0)
	})
	t.Run("hello then frame instead of proof", func(t *testing.T) {
		c := dialRaw(t, srv.Addr())
		h := hello{kind: kindRPC, nodeID: "intruder"}
		_, _ = c.Write(h.encode())
		_, _ = c.Write(request)
		// Only the random challenge may come back.
		expectClosedSilently(t, c, challengeSize)
	})
	t.Run("wrong secret", func(t *testing.T) {
		c, err := authRaw(t, srv.Addr(), []byte("wrong secret"), kindRPC)
		if !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("handshake err = %v", err)
		}
		_, _ = c.Write(request)
		expectClosedSilently(t, c, 0)
	})
	t.Run("wrong secret via Transport", func(t *testing.T) {
		cli := newNode(t, "intruder", func(c *Config) { c.Secret = []byte("wrong") })
		_, err := cli.Call(context.Background(), srv.Addr(), opCount, nil)
		if !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("raft stream without auth", func(t *testing.T) {
		l, err := srv.ListenStream("raft")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		accepted := make(chan net.Conn, 1)
		go func() {
			if c, err := l.Accept(); err == nil {
				accepted <- c
			}
		}()
		c, err := authRaw(t, srv.Addr(), []byte("wrong secret"), "raft")
		if !errors.Is(err, ErrUnauthenticated) {
			t.Fatalf("handshake err = %v", err)
		}
		_, _ = c.Write([]byte("append entries"))
		expectClosedSilently(t, c, 0)
		select {
		case <-accepted:
			t.Fatal("unauthenticated raft stream accepted")
		case <-time.After(100 * time.Millisecond):
		}
	})
	if n := handled.Load(); n != 0 {
		t.Fatalf("handler invoked %d times by unauthenticated peers", n)
	}
	if v := metricValue(t, srv.reg, "datenlord_transport_auth_failures_total", nil); v < 4 {
		t.Fatalf("auth failures metric = %v", v)
	}
	// With the right secret the same request is served.
	c, err := authRaw(t, srv.Addr(), testSecret, kindRPC)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write(request)
	fr := newFrameReader(nil, c, 1<<20, 0, crc32.MakeTable(crc32.Castagnoli))
	h, err := fr.readHeader()
	if err != nil || h.flags != flagResponse || h.id != 1 {
		t.Fatalf("response header %+v, %v", h, err)
	}
	if handled.Load() != 1 {
		t.Fatal("authenticated request not handled")
	}
}

// recordingConn records what a client writes.
type recordingConn struct {
	net.Conn
	wrote bytes.Buffer
}

func (r *recordingConn) Write(b []byte) (int, error) {
	r.wrote.Write(b)
	return r.Conn.Write(b)
}

func TestAuthReplayedHandshakeFails(t *testing.T) {
	srv, handled := countingServer(t, nil)
	rc := &recordingConn{Conn: dialRaw(t, srv.Addr())}
	if _, err := clientHandshake(rc, testSecret, "victim", kindRPC); err != nil {
		t.Fatal(err)
	}
	recorded := rc.wrote.Bytes() // hello + proof of a genuine client
	c := dialRaw(t, srv.Addr())
	_, _ = c.Write(recorded)
	_, _ = c.Write(encodeFrame(header{op: opCount, id: 1, flags: flagRequest}, nil))
	expectClosedSilently(t, c, challengeSize)
	if handled.Load() != 0 {
		t.Fatal("replayed handshake reached a handler")
	}
}

func TestAuthReflectedProofFails(t *testing.T) {
	// A server proof is not a valid client proof for the same nonces.
	var sn, cn [nonceSize]byte
	_, _ = rand.Read(sn[:])
	_, _ = rand.Read(cn[:])
	c := proof(testSecret, clientLabel, sn, cn, "a", "", kindRPC, 0)
	s := proof(testSecret, serverLabel, sn, cn, "a", "", kindRPC, 0)
	if c == s {
		t.Fatal("client and server proofs coincide")
	}
}

func TestAuthRogueServer(t *testing.T) {
	rogue := newNode(t, "rogue", func(c *Config) { c.Secret = []byte("rogue") })
	cli := newNode(t, "client", nil)
	_, err := cli.DialStream(context.Background(), "raft", rogue.Addr())
	if !errors.Is(err, ErrUnauthenticated) {
		t.Fatalf("err = %v", err)
	}
}

func TestStreams(t *testing.T) {
	srv := newNode(t, "server", nil)
	cli := newNode(t, "client", nil)
	l, err := srv.ListenStream("raft")
	if err != nil {
		t.Fatal(err)
	}
	if l.Addr().String() != srv.Addr() {
		t.Fatalf("listener addr %v", l.Addr())
	}
	if _, err := srv.ListenStream("raft"); err == nil {
		t.Fatal("second ListenStream on one kind succeeded")
	}
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c) // echo
	}()
	c, err := cli.DialStream(context.Background(), "raft", srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := bytes.Repeat([]byte("raft bytes "), 10000)
	go func() { _, _ = c.Write(msg) }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo: %v", err)
	}
	// A kind nobody listens on is refused with a clear error.
	if _, err := cli.DialStream(context.Background(), "other", srv.Addr()); err == nil || !strings.Contains(err.Error(), "no listener") {
		t.Fatalf("unknown kind: %v", err)
	}
	// Accept unblocks on Close.
	l2, err := srv.ListenStream("second")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := l2.Accept(); done <- err }()
	time.Sleep(20 * time.Millisecond)
	l2.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Accept did not unblock on Close")
	}
	// And on transport Close.
	l3, _ := srv.ListenStream("third")
	go func() { _, err := l3.Accept(); done <- err }()
	srv.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after transport Close: %v", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Accept did not unblock on transport Close")
	}
}

// Acceptance 4 of issue 5: malformed input drops the connection, the node
// keeps serving, nothing leaks.
func TestMalformedFrames(t *testing.T) {
	srv, _ := countingServer(t, func(c *Config) { c.DialTimeout = 500 * time.Millisecond; c.MaxFrame = 1 << 20 })
	registerBasic(srv.Transport)
	good := newNode(t, "good", nil)
	ctx := context.Background()
	if _, err := good.Call(ctx, srv.Addr(), opEcho, []byte("warm")); err != nil {
		t.Fatal(err)
	}
	runtime.GC()
	baseline := runtime.NumGoroutine()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)

	valid := encodeFrame(header{op: opEcho, id: 1, flags: flagRequest}, []byte("payload"))
	badCRC := bytes.Clone(valid)
	badCRC[len(badCRC)-1] ^= 0xff
	oversized := bytes.Clone(valid[:headerSize])
	binary.LittleEndian.PutUint32(oversized[28:], 1<<30)
	binary.LittleEndian.PutUint32(oversized[0:], 1<<30+headerSize)
	badLen := bytes.Clone(valid)
	binary.LittleEndian.PutUint32(badLen[0:], 5)
	badMagic := bytes.Clone(valid)
	badMagic[4] = 0
	badFlags := encodeFrame(header{op: opEcho, id: 1, flags: 0x40}, nil)
	response := encodeFrame(header{op: opEcho, id: 1, flags: flagResponse}, nil)
	uncheckedResponse := encodeUncheckedFrame(header{op: opEcho, id: 1, flags: flagResponse | flagUnchecked}, []byte("page"))
	// A request asking for an unchecked response is itself checked in
	// full: a trailer over the header alone is a bad CRC.
	uncheckedRequest := encodeUncheckedFrame(header{op: opEcho, id: 1, flags: flagRequest | flagUnchecked}, []byte("payload"))
	uncheckedError := encodeFrame(header{op: opEcho, id: 1, flags: flagResponse | flagError | flagUnchecked}, []byte("\x00\x00\x00\x00no"))
	uncheckedCancel := encodeFrame(header{op: opEcho, id: 1, flags: flagCancel | flagUnchecked}, nil)
	random := make([]byte, 4096)
	_, _ = rand.Read(random)

	tests := []struct {
		name   string
		auth   bool
		input  []byte
		slow   bool // one byte every 100ms
		eof    bool // half-close after the input
		reason string
	}{
		{name: "truncated header", auth: true, input: valid[:10], eof: true, reason: "truncated"},
		{name: "truncated payload", auth: true, input: valid[:headerSize+3], eof: true, reason: "truncated"},
		{name: "stalled header", auth: true, input: valid[:10], reason: "timeout"},
		{name: "stalled payload", auth: true, input: valid[:headerSize+3], reason: "timeout"},
		{name: "bad crc", auth: true, input: badCRC, reason: "crc"},
		{name: "oversized length", auth: true, input: oversized, reason: "oversized"},
		{name: "inconsistent length", auth: true, input: badLen, reason: "length"},
		{name: "bad magic", auth: true, input: badMagic, reason: "magic"},
		{name: "bad flags", auth: true, input: badFlags, reason: "flags"},
		{name: "response from client", auth: true, input: response, reason: "unexpected"},
		{name: "unchecked response from client", auth: true, input: uncheckedResponse, reason: "unexpected"},
		{name: "unchecked request without payload crc", auth: true, input: uncheckedRequest, reason: "crc"},
		{name: "unchecked error response", auth: true, input: uncheckedError, reason: "flags"},
		{name: "unchecked cancel", auth: true, input: uncheckedCancel, reason: "flags"},
		{name: "random bytes", auth: true, input: random},
		{name: "random bytes before auth", input: random},
		{name: "slowloris after auth", auth: true, input: valid, slow: true, reason: "timeout"},
		{name: "slowloris before auth", input: (&hello{kind: kindRPC, nodeID: "slow"}).encode(), slow: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var before float64
			if tc.reason != "" {
				before = metricValue(t, srv.reg, "datenlord_transport_frame_errors_total", map[string]string{"reason": tc.reason})
			}
			var c net.Conn
			if tc.auth {
				var err error
				if c, err = authRaw(t, srv.Addr(), testSecret, kindRPC); err != nil {
					t.Fatal(err)
				}
			} else {
				c = dialRaw(t, srv.Addr())
			}
			start := time.Now()
			if tc.slow {
				go func() {
					for _, b := range tc.input {
						if _, err := c.Write([]byte{b}); err != nil {
							return
						}
						time.Sleep(100 * time.Millisecond)
					}
				}()
			} else {
				_, _ = c.Write(tc.input)
				if tc.eof {
					_ = c.(*net.TCPConn).CloseWrite()
				}
			}
			expectClosedSilently(t, c, challengeSize)
			if el := time.Since(start); el > 3*time.Second {
				t.Fatalf("dropped after %v", el)
			}
			if tc.reason != "" {
				deadline := time.Now().Add(time.Second)
				for metricValue(t, srv.reg, "datenlord_transport_frame_errors_total", map[string]string{"reason": tc.reason}) <= before {
					if time.Now().After(deadline) {
						t.Fatalf("frame error %q not counted", tc.reason)
					}
					time.Sleep(5 * time.Millisecond)
				}
			}
			// The node keeps serving others.
			if _, err := good.Call(ctx, srv.Addr(), opEcho, []byte("still there")); err != nil {
				t.Fatal(err)
			}
		})
	}
	settleGoroutines(t, baseline)
	runtime.GC()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	if grow := int64(after.HeapAlloc) - int64(before.HeapAlloc); grow > 8<<20 {
		t.Fatalf("heap grew by %d bytes", grow)
	}
}

func TestHandshakeTimeoutAndSilentClient(t *testing.T) {
	srv, _ := countingServer(t, func(c *Config) { c.DialTimeout = 300 * time.Millisecond })
	runtime.GC()
	baseline := runtime.NumGoroutine()
	conns := make([]net.Conn, 20)
	for i := range conns {
		conns[i] = dialRaw(t, srv.Addr())
	}
	for _, c := range conns {
		expectClosedSilently(t, c, 0)
	}
	settleGoroutines(t, baseline)
}
