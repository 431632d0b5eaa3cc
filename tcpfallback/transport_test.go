package tcpfallback

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var testSecret = []byte("test cluster secret")

const (
	opEcho   = 0x0101
	opErr    = 0x0102
	opErrno  = 0x0103
	opPanic  = 0x0104
	opSized  = 0x0105 // responds with as many bytes as the request says
	opCount  = 0x0106
	opCtxErr = 0x0107 // fails with a wrapped context.DeadlineExceeded
	opUnused = 0x01ff
)

type testNode struct {
	*Transport
	reg *prometheus.Registry
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// newNode starts a listening transport closed at the end of the test.
func newNode(t testing.TB, id string, mod func(*Config)) *testNode {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := Config{NodeID: id, Listen: "127.0.0.1:0", Secret: testSecret, Registerer: reg, Logger: quietLogger(), DialTimeout: 2 * time.Second}
	if mod != nil {
		mod(&cfg)
	}
	tr, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { tr.Close() })
	return &testNode{Transport: tr, reg: reg}
}

func registerBasic(tr *Transport) {
	tr.Handle(opEcho, func(_ context.Context, _ string, req []byte) ([]byte, error) {
		return bytes.Clone(req), nil
	})
	tr.Handle(opErr, func(context.Context, string, []byte) ([]byte, error) {
		return nil, errors.New("plain failure")
	})
	tr.Handle(opErrno, func(context.Context, string, []byte) ([]byte, error) {
		return nil, fmt.Errorf("lookup x: %w", syscall.ENOENT)
	})
	tr.Handle(opPanic, func(context.Context, string, []byte) ([]byte, error) {
		panic("boom")
	})
	tr.Handle(opCtxErr, func(context.Context, string, []byte) ([]byte, error) {
		return nil, fmt.Errorf("wait for fill: %w", context.DeadlineExceeded)
	})
}

// metricValue sums the samples of a metric family matching labels.
func metricValue(t testing.TB, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

// settleGoroutines waits until the goroutine count is at most want.
func settleGoroutines(t testing.TB, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := runtime.NumGoroutine()
		if n <= want {
			return
		}
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			t.Fatalf("goroutines: %d, baseline %d\n%s", n, want, buf)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestCallResponse(t *testing.T) {
	srv := newNode(t, "server", nil)
	registerBasic(srv.Transport)
	cli := newNode(t, "client", nil)
	ctx := context.Background()
	big := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	tests := []struct {
		name    string
		op      uint16
		req     []byte
		want    []byte
		wantErr string
		errno   syscall.Errno
		is      error // the remote error must unwrap to it
	}{
		{name: "empty", op: opEcho, req: nil, want: []byte{}},
		{name: "small", op: opEcho, req: []byte("hello"), want: []byte("hello")},
		{name: "64KiB", op: opEcho, req: big, want: big},
		{name: "error", op: opErr, wantErr: "remote: plain failure"},
		{name: "errno", op: opErrno, wantErr: "lookup x: no such file or directory", errno: syscall.ENOENT},
		{name: "unknown op", op: opUnused, wantErr: "unknown op 0x01ff"},
		{name: "panic", op: opPanic, wantErr: "panicked: boom"},
		{name: "context error", op: opCtxErr, wantErr: "wait for fill: context deadline exceeded", is: context.DeadlineExceeded},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cli.Call(ctx, srv.Addr(), tc.op, tc.req)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				var re *RemoteError
				if !errors.As(err, &re) {
					t.Fatalf("err %v is not a RemoteError", err)
				}
				if tc.errno != 0 && (!errors.Is(err, tc.errno) || re.Errno != uint32(tc.errno)) {
					t.Fatalf("err %v does not carry errno %v", err, tc.errno)
				}
				if tc.is != nil && !errors.Is(err, tc.is) {
					t.Fatalf("err %v does not unwrap to %v", err, tc.is)
				}
				if tc.is == nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)) {
					t.Fatalf("err %v unwraps to a context error", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, tc.want) {
				t.Fatalf("got %d bytes, want %d", len(got), len(tc.want))
			}
		})
	}
	// The node still serves after a handler panic.
	if _, err := cli.Call(ctx, srv.Addr(), opEcho, []byte("x")); err != nil {
		t.Fatal(err)
	}
	if v := metricValue(t, cli.reg, "datenlord_transport_requests_total", map[string]string{"op": "0x0101", "outcome": "ok"}); v < 3 {
		t.Fatalf("ok requests metric = %v", v)
	}
	if v := metricValue(t, cli.reg, "datenlord_transport_request_duration_seconds", map[string]string{"peer": srv.Addr()}); v < 3 {
		t.Fatalf("latency histogram count = %v", v)
	}
}

func TestPeerIdentity(t *testing.T) {
	srv := newNode(t, "server", nil)
	srv.Handle(opEcho, func(_ context.Context, peer string, _ []byte) ([]byte, error) { return []byte(peer), nil })
	cli := newNode(t, "node-7", nil)
	got, err := cli.Call(context.Background(), srv.Addr(), opEcho, nil)
	if err != nil || string(got) != "node-7" {
		t.Fatalf("peer = %q, %v", got, err)
	}
}

func TestHandleTwicePanics(t *testing.T) {
	srv := newNode(t, "server", nil)
	srv.Handle(opEcho, func(context.Context, string, []byte) ([]byte, error) { return nil, nil })
	defer func() {
		if recover() == nil {
			t.Fatal("no panic")
		}
	}()
	srv.Handle(opEcho, func(context.Context, string, []byte) ([]byte, error) { return nil, nil })
}

func TestConcurrentCalls(t *testing.T) {
	srv := newNode(t, "server", nil)
	registerBasic(srv.Transport)
	cli := newNode(t, "client", func(c *Config) { c.MaxInFlight = 1024 })
	srv2 := srv // one peer: all calls multiplexed on one connection
	const n = 1000
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := fmt.Appendf(nil, "request %d %s", i, strings.Repeat("x", i))
			got, err := cli.Call(context.Background(), srv2.Addr(), opEcho, req)
			if err != nil {
				errs <- err
				return
			}
			if !bytes.Equal(got, req) {
				errs <- fmt.Errorf("call %d: response mismatch", i)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestLargePayloads(t *testing.T) {
	const maxFrame = 4 << 20
	mod := func(c *Config) { c.MaxFrame = maxFrame }
	srv := newNode(t, "server", mod)
	registerBasic(srv.Transport)
	cli := newNode(t, "client", mod)
	ctx := context.Background()
	for _, size := range []int{smallFrame, smallFrame + 1, maxFrame - 1, maxFrame} {
		req := make([]byte, size)
		for i := range req {
			req[i] = byte(i * 7)
		}
		got, err := cli.Call(ctx, srv.Addr(), opEcho, req)
		if err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		if !bytes.Equal(got, req) {
			t.Fatalf("size %d: mismatch", size)
		}
	}
	if _, err := cli.Call(ctx, srv.Addr(), opEcho, make([]byte, maxFrame+1)); err == nil || !strings.Contains(err.Error(), "exceeds MaxFrame") {
		t.Fatalf("oversized request: %v", err)
	}
}

func TestCallIntoReadsIntoCallerBuffer(t *testing.T) {
	srv := newNode(t, "server", nil)
	registerBasic(srv.Transport)
	cli := newNode(t, "client", nil)
	req := bytes.Repeat([]byte{0xab}, 64<<10)
	buf := make([]byte, 128<<10)
	got, err := cli.CallInto(context.Background(), srv.Addr(), opEcho, req, buf)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, req) || &got[0] != &buf[0] {
		t.Fatal("response not read into the caller's buffer")
	}
	small := make([]byte, 10)
	got, err = cli.CallInto(context.Background(), srv.Addr(), opEcho, req, small)
	if err != nil || !bytes.Equal(got, req) {
		t.Fatalf("fallback allocation: %v", err)
	}
}

func TestDeadlinePropagation(t *testing.T) {
	srv := newNode(t, "server", nil)
	seen := make(chan time.Time, 1)
	cancelled := make(chan error, 1)
	srv.Handle(opEcho, func(ctx context.Context, _ string, _ []byte) ([]byte, error) {
		dl, _ := ctx.Deadline()
		seen <- dl
		<-ctx.Done()
		cancelled <- ctx.Err()
		return nil, ctx.Err()
	})
	cli := newNode(t, "client", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	want, _ := ctx.Deadline()
	start := time.Now()
	_, err := cli.Call(ctx, srv.Addr(), opEcho, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if el := time.Since(start); el > 600*time.Millisecond {
		t.Fatalf("call returned after %v", el)
	}
	if dl := <-seen; !dl.Equal(want) {
		t.Fatalf("handler deadline %v, caller %v", dl, want)
	}
	select {
	case err := <-cancelled:
		if err == nil {
			t.Fatal("handler ctx not done")
		}
	case <-time.After(2 * time.Second):
		t.Fatal("handler ctx never cancelled")
	}
}

func TestCancelFrame(t *testing.T) {
	srv := newNode(t, "server", nil)
	started := make(chan struct{})
	handlerErr := make(chan error, 1)
	srv.Handle(opEcho, func(ctx context.Context, _ string, _ []byte) ([]byte, error) {
		if _, ok := ctx.Deadline(); ok {
			handlerErr <- errors.New("unexpected deadline")
		}
		close(started)
		<-ctx.Done()
		handlerErr <- ctx.Err()
		return nil, nil
	})
	cli := newNode(t, "client", nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := cli.Call(ctx, srv.Addr(), opEcho, nil)
		done <- err
	}()
	<-started
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v", err)
		}
	case <-time.After(time.Second):
		t.Fatal("Call did not return on cancel")
	}
	select {
	case err := <-handlerErr:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("handler saw %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("cancel frame did not cancel the handler")
	}
	// The connection is still healthy.
	srv.Handle(opCount, func(context.Context, string, []byte) ([]byte, error) { return []byte("ok"), nil })
	if got, err := cli.Call(context.Background(), srv.Addr(), opCount, nil); err != nil || string(got) != "ok" {
		t.Fatalf("after cancel: %q, %v", got, err)
	}
}

func TestPeerDownFailsFast(t *testing.T) {
	// A port nobody listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cli := newNode(t, "client", nil)
	_, err = cli.Call(context.Background(), addr, opEcho, nil)
	if err == nil || !strings.Contains(err.Error(), "connection refused") || !strings.Contains(err.Error(), "retrying in") {
		t.Fatalf("first err = %v", err)
	}
	start := time.Now()
	_, err = cli.Call(context.Background(), addr, opEcho, nil)
	if el := time.Since(start); el > 10*time.Millisecond {
		t.Fatalf("second call took %v", el)
	}
	if err == nil || !strings.Contains(err.Error(), "connection refused (retrying in") || !strings.Contains(err.Error(), addr) {
		t.Fatalf("second err = %v", err)
	}
	t.Logf("peer down: %v", err)
}

func TestPeerRestartReconnects(t *testing.T) {
	srv := newNode(t, "server", nil)
	registerBasic(srv.Transport)
	addr := srv.Addr()
	cli := newNode(t, "client", nil)
	ctx := context.Background()
	if _, err := cli.Call(ctx, addr, opEcho, []byte("a")); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	// Calls fail with a clear error while the peer is down.
	deadline := time.Now().Add(2 * time.Second)
	var err error
	for time.Now().Before(deadline) {
		if _, err = cli.Call(ctx, addr, opEcho, []byte("b")); err != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err == nil {
		t.Fatal("call succeeded against a closed peer")
	}
	srv2 := newNode(t, "server", func(c *Config) { c.Listen = addr })
	registerBasic(srv2.Transport)
	deadline = time.Now().Add(10 * time.Second)
	for {
		_, err = cli.Call(ctx, addr, opEcho, []byte("c"))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no reconnect: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestConnectionLossFailsInFlight(t *testing.T) {
	srv := newNode(t, "server", nil)
	block := make(chan struct{})
	srv.Handle(opEcho, func(ctx context.Context, _ string, _ []byte) ([]byte, error) {
		<-block
		return nil, nil
	})
	defer close(block)
	cli := newNode(t, "client", nil)
	done := make(chan error, 1)
	go func() {
		_, err := cli.Call(context.Background(), srv.Addr(), opEcho, nil)
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	// Kill the server side of the connection.
	srv.mu.Lock()
	for c := range srv.conns {
		c.Close()
	}
	srv.mu.Unlock()
	select {
	case err := <-done:
		if err == nil || !errors.Is(err, errConnLost) || !strings.Contains(err.Error(), "connection to") {
			t.Fatalf("err = %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("in-flight call not failed on connection loss")
	}
}

func TestCloseFailsInFlightCalls(t *testing.T) {
	srv := newNode(t, "server", nil)
	started := make(chan struct{}, 10)
	srv.Handle(opEcho, func(ctx context.Context, _ string, _ []byte) ([]byte, error) {
		started <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	})
	cli := newNode(t, "client", nil)
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := cli.Call(context.Background(), srv.Addr(), opEcho, nil)
			errs <- err
		}()
	}
	for range 3 {
		<-started
	}
	cli.Close()
	for range 3 {
		select {
		case err := <-errs:
			if !errors.Is(err, ErrClosed) {
				t.Fatalf("err = %v, want ErrClosed", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("in-flight call survived Close")
		}
	}
	if _, err := cli.Call(context.Background(), srv.Addr(), opEcho, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("call after Close: %v", err)
	}
}

func TestBackPressure(t *testing.T) {
	const limit = 4
	srv := newNode(t, "server", nil)
	var cur, peak atomic.Int32
	release := make(chan struct{})
	srv.Handle(opEcho, func(ctx context.Context, _ string, _ []byte) ([]byte, error) {
		n := cur.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		<-release
		cur.Add(-1)
		return nil, nil
	})
	cli := newNode(t, "client", func(c *Config) { c.MaxInFlight = limit })
	var wg sync.WaitGroup
	for range 3 * limit {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := cli.Call(context.Background(), srv.Addr(), opEcho, nil); err != nil {
				t.Error(err)
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	if got := cur.Load(); got != limit {
		t.Fatalf("in flight = %d, want %d", got, limit)
	}
	// A blocked caller honours its ctx.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := cli.Call(ctx, srv.Addr(), opEcho, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("blocked call: %v", err)
	}
	close(release)
	wg.Wait()
	if p := peak.Load(); p > limit {
		t.Fatalf("peak in flight %d > %d", p, limit)
	}
}

func TestServerBackPressure(t *testing.T) {
	const limit = 3
	srv := newNode(t, "server", func(c *Config) { c.MaxInFlight = limit })
	var cur atomic.Int32
	release := make(chan struct{})
	srv.Handle(opEcho, func(ctx context.Context, _ string, _ []byte) ([]byte, error) {
		cur.Add(1)
		defer cur.Add(-1)
		<-release
		return nil, nil
	})
	cli := newNode(t, "client", nil)
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = cli.Call(context.Background(), srv.Addr(), opEcho, nil)
		}()
	}
	time.Sleep(200 * time.Millisecond)
	if got := cur.Load(); got != limit {
		t.Fatalf("server handlers running = %d, want %d", got, limit)
	}
	close(release)
	wg.Wait()
}

// Close must not hang when a connection's handler slots are all taken by
// handlers that wait for their ctx.
func TestCloseWithFullServerConnection(t *testing.T) {
	srv := newNode(t, "server", func(c *Config) { c.MaxInFlight = 2 })
	started := make(chan struct{}, 10)
	srv.Handle(opEcho, func(ctx context.Context, _ string, _ []byte) ([]byte, error) {
		started <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	})
	cli := newNode(t, "client", nil)
	for range 4 {
		go func() { _, _ = cli.Call(context.Background(), srv.Addr(), opEcho, nil) }()
	}
	<-started
	<-started
	time.Sleep(50 * time.Millisecond)
	done := make(chan struct{})
	go func() { srv.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("Close hung")
	}
}
