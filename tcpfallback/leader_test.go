package tcpfallback

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const opPinned = 0x0111 // inline sender: req[0] KiB of req[1] from "pinned" memory

// pinnedServer registers opPinned over a 1 MiB "arena"; pins counts the
// pins not yet released.
func pinnedServer(t *testing.T) (*testNode, *atomic.Int64) {
	srv := newNode(t, "server", nil)
	var pins atomic.Int64
	arena := make([]byte, 256<<10)
	for i := range arena {
		arena[i] = byte(i * 31)
	}
	srv.HandleInlineSend(opPinned, 16, func(_ string, req, dst []byte) ([]byte, []byte, uint64, bool) {
		if len(req) != 2 || req[0] == 0 {
			return nil, nil, 0, false
		}
		pins.Add(1)
		head := append(dst[:0], "head"...)
		return head, arena[int(req[1]) : int(req[1])+int(req[0])<<10], uint64(req[0]), true
	}, func(token uint64) {
		if token == 0 {
			panic("release of a token never handed out")
		}
		pins.Add(-1)
	}, func(context.Context, string, []byte) ([]byte, error) { return []byte("slow"), nil })
	registerBasic(srv.Transport)
	return srv, &pins
}

// TestInlineSendSplitSum: an inline sender's head and pinned body arrive
// intact, bodySum is the CRC-32C of the bytes in body, every pin is
// released, and a request the sender declines goes to the Handler.
func TestInlineSendSplitSum(t *testing.T) {
	srv, pins := pinnedServer(t)
	cli := newNode(t, "client", nil)
	table := crc32.MakeTable(crc32.Castagnoli)
	ctx := context.Background()
	for _, kib := range []byte{1, 4, 64, 200} {
		head, body := make([]byte, 4), make([]byte, 256<<10)
		n, sum, err := cli.CallIntoSplitTimeout(ctx, time.Second, srv.Addr(), opPinned, []byte{kib, 3}, head, body)
		want := make([]byte, int(kib)<<10)
		for i := range want {
			want[i] = byte((i + 3) * 31)
		}
		if err != nil || n != 4+len(want) || string(head) != "head" || !bytes.Equal(body[:len(want)], want) {
			t.Fatalf("%d KiB: n %d head %q err %v (body equal %v)", kib, n, head, err, bytes.Equal(body[:len(want)], want))
		}
		if sum != crc32.Checksum(want, table) {
			t.Fatalf("%d KiB: bodySum 0x%08x, want 0x%08x", kib, sum, crc32.Checksum(want, table))
		}
	}
	if got, err := cli.Call(ctx, srv.Addr(), opPinned, []byte{0, 0}); err != nil || string(got) != "slow" {
		t.Fatalf("declined: %q %v", got, err)
	}
	if p := pins.Load(); p != 0 {
		t.Fatalf("%d pins not released", p)
	}
}

// TestSplitCallAllocatesNothing: a page-read shaped call (inline sender,
// split call with a timeout) allocates nothing on either side once the
// connection is up, with a ctx that cannot be cancelled and with one
// that can.
func TestSplitCallAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts are meaningless under the race detector")
	}
	srv, _ := pinnedServer(t)
	cli := newNode(t, "client", nil)
	cctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	head, body := make([]byte, 4), make([]byte, 64<<10)
	req := []byte{64, 0}
	for _, ctx := range []context.Context{context.Background(), cctx} {
		call := func() {
			if _, _, err := cli.CallIntoSplitTimeout(ctx, time.Second, srv.Addr(), opPinned, req, head, body); err != nil {
				t.Fatal(err)
			}
		}
		call() // dial, buffers, metrics
		if a := testing.AllocsPerRun(200, call); a > 0.1 {
			t.Errorf("%.2f allocations per call", a)
		}
	}
}

// TestCallTimeout: CallIntoSplitTimeout's own timeout ends the call with
// context.DeadlineExceeded (whether the caller reads its response itself
// or waits for it), the handler sees the deadline, and the connection
// stays usable.
func TestCallTimeout(t *testing.T) {
	srv := newNode(t, "server", nil)
	release := make(chan struct{})
	var seen atomic.Int64
	srv.Handle(opCount, func(ctx context.Context, _ string, _ []byte) ([]byte, error) {
		if _, ok := ctx.Deadline(); ok {
			seen.Add(1)
		}
		select {
		case <-ctx.Done():
		case <-release:
		}
		return nil, ctx.Err()
	})
	registerBasic(srv.Transport)
	cli := newNode(t, "client", nil)
	head, body := make([]byte, 8), make([]byte, 8)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 { // one reads, the others wait for it
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			_, _, err := cli.CallIntoSplitTimeout(context.Background(), 100*time.Millisecond, srv.Addr(), opCount, nil, head, body)
			if !errors.Is(err, context.DeadlineExceeded) {
				errs <- fmt.Errorf("err = %v", err)
			} else if el := time.Since(start); el > time.Second {
				errs <- fmt.Errorf("returned after %v", el)
			}
		}()
	}
	wg.Wait()
	close(release)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if seen.Load() == 0 {
		t.Error("the handler never saw the call's deadline")
	}
	if got, err := cli.Call(context.Background(), srv.Addr(), opEcho, []byte("after")); err != nil || string(got) != "after" {
		t.Fatalf("after timeouts: %q %v", got, err)
	}
}

// TestCancelWhileReadingOwnResponse: a caller reading its own response
// (the connection was idle) is interrupted by its ctx, both within the
// polling grace and after it; the abandoned response is drained and the
// connection serves the next call.
func TestCancelWhileReadingOwnResponse(t *testing.T) {
	srv := newNode(t, "server", nil)
	release := make(chan struct{})
	srv.Handle(opCount, func(ctx context.Context, _ string, _ []byte) ([]byte, error) {
		<-release // ignores its ctx: the response still comes, to nobody
		return bytes.Repeat([]byte("z"), 100<<10), nil
	})
	registerBasic(srv.Transport)
	cli := newNode(t, "client", nil)
	if _, err := cli.Call(context.Background(), srv.Addr(), opEcho, nil); err != nil {
		t.Fatal(err)
	}
	for _, after := range []time.Duration{0, leaderGrace / 2, 20 * leaderGrace} {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			_, err := cli.Call(ctx, srv.Addr(), opCount, nil)
			done <- err
		}()
		time.Sleep(after)
		start := time.Now()
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("cancel after %v: err = %v", after, err)
			}
			if el := time.Since(start); el > 500*time.Millisecond {
				t.Fatalf("cancel after %v: returned %v later", after, el)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("cancel after %v: call did not return", after)
		}
	}
	close(release)
	for i := range 20 {
		req := fmt.Appendf(nil, "next %d", i)
		if got, err := cli.Call(context.Background(), srv.Addr(), opEcho, req); err != nil || !bytes.Equal(got, req) {
			t.Fatalf("after cancels: %q %v", got, err)
		}
	}
}

// TestIdleConnectionClosedByPeer: nobody reads an idle connection, yet a
// call made after its peer closed it dials a new one rather than failing.
func TestIdleConnectionClosedByPeer(t *testing.T) {
	srv := newNode(t, "server", nil)
	registerBasic(srv.Transport)
	cli := newNode(t, "client", nil)
	ctx := context.Background()
	if _, err := cli.Call(ctx, srv.Addr(), opEcho, []byte("a")); err != nil {
		t.Fatal(err)
	}
	srv.mu.Lock()
	for c := range srv.conns {
		c.Close()
	}
	srv.mu.Unlock()
	time.Sleep(2 * idleProbe)
	if got, err := cli.Call(ctx, srv.Addr(), opEcho, []byte("b")); err != nil || string(got) != "b" {
		t.Fatalf("call after the peer closed the idle connection: %q %v", got, err)
	}
}

// TestMixedLeadersAndFollowers: many callers, with short and long
// responses, cancellable ctxs, some cancelled, on one connection: every
// completed call gets its own bytes.
func TestMixedLeadersAndFollowers(t *testing.T) {
	srv := newNode(t, "server", nil)
	registerBasic(srv.Transport)
	srv.Handle(opSized, func(_ context.Context, _ string, req []byte) ([]byte, error) {
		out := make([]byte, int(req[0])<<10)
		for i := range out {
			out[i] = req[1]
		}
		return out, nil
	})
	cli := newNode(t, "client", nil)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 0, 256<<10)
			for i := range 200 {
				ctx, cancel := context.WithCancel(context.Background())
				if i%17 == 0 {
					time.AfterFunc(time.Duration(i%5)*100*time.Microsecond, cancel)
				}
				kib, fill := byte(1+(g*31+i*7)%200), byte(g*16+i)
				got, err := cli.CallInto(ctx, srv.Addr(), opSized, []byte{kib, fill}, buf)
				cancel()
				switch {
				case errors.Is(err, context.Canceled):
				case err != nil:
					errs <- err
					return
				case len(got) != int(kib)<<10 || bytes.Count(got, []byte{fill}) != len(got):
					errs <- fmt.Errorf("caller %d call %d: wrong response (%d bytes)", g, i, len(got))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}
