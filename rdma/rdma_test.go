package rdma_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/datenlord/datenlord-go/rdma"
)

// openOrSkip opens the first RDMA device, or skips loudly when this host
// has none: these tests run for real in the soft-RoCE guest (make
// test-rdma, ci/rxe-run.sh), which sets DATENLORD_RDMA_REQUIRED=1 so that
// a missing device there fails instead.
func openOrSkip(t *testing.T) *rdma.Device {
	t.Helper()
	d, err := rdma.Open(rdma.Config{})
	if rdma.Unavailable(err) {
		if os.Getenv("DATENLORD_RDMA_REQUIRED") != "" {
			t.Fatalf("DATENLORD_RDMA_REQUIRED is set but: %v", err)
		}
		msg := fmt.Sprintf("SKIP: no RDMA device (run make test-rdma): %v", err)
		fmt.Fprintln(os.Stderr, "!!!!", msg)
		t.Skip(msg)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Errorf("close device: %v", err)
		}
	})
	return d
}

// region is a registered AllocBuffer.
func region(t *testing.T, d *rdma.Device, n int, access rdma.Access) *rdma.MR {
	t.Helper()
	buf, err := rdma.AllocBuffer(n)
	if err != nil {
		t.Fatal(err)
	}
	mr, err := d.Register(buf, access)
	if err != nil {
		_ = rdma.FreeBuffer(buf)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := mr.Close(); err != nil {
			t.Errorf("close MR: %v", err)
		}
		_ = rdma.FreeBuffer(buf)
	})
	return mr
}

// pair returns two connected QPs on d: a reads, b is the peer.
func pair(t *testing.T, d *rdma.Device, cfg rdma.QPConfig) (a, b *rdma.QP) {
	t.Helper()
	a, err := d.NewQP(cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, err = d.NewQP(cfg)
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	// The endpoints travel as bytes, as over the control connection.
	var ea, eb rdma.Endpoint
	wa, _ := a.Endpoint().MarshalBinary()
	wb, _ := b.Endpoint().MarshalBinary()
	if err := ea.UnmarshalBinary(wa); err != nil {
		t.Fatal(err)
	}
	if err := eb.UnmarshalBinary(wb); err != nil {
		t.Fatal(err)
	}
	if err := a.Connect(eb); err != nil {
		t.Fatal(err)
	}
	if err := b.Connect(ea); err != nil {
		t.Fatal(err)
	}
	return a, b
}

func fill(b []byte, seed byte) {
	for i := range b {
		b[i] = byte(i*7) + seed
	}
}

func TestEndpointWire(t *testing.T) {
	e := rdma.Endpoint{QPN: 17, PSN: 0xabcdef, MTU: 4096, GID: rdma.GID{10: 0xff, 11: 0xff, 12: 127, 15: 1}}
	b, err := e.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var got rdma.Endpoint
	if err := got.UnmarshalBinary(b); err != nil || got != e {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	if ip, ok := got.GID.IPv4(); !ok || ip.String() != "127.0.0.1" {
		t.Fatalf("GID %s: IPv4 %v %v", got.GID, ip, ok)
	}
	for _, bad := range [][]byte{nil, b[:27], append(slices.Clone(b), 0)} {
		if err := got.UnmarshalBinary(bad); err == nil {
			t.Errorf("%d bytes accepted", len(bad))
		}
	}
	zero := slices.Clone(b)
	clear(zero[12:])
	if err := got.UnmarshalBinary(zero); err == nil {
		t.Error("zero GID accepted")
	}
	mtu := slices.Clone(b)
	mtu[8] = 100
	if err := got.UnmarshalBinary(mtu); err == nil {
		t.Error("bad MTU accepted")
	}
}

func TestNoDeviceIsUnavailable(t *testing.T) {
	_, err := rdma.Open(rdma.Config{Device: "no-such-device-xyz"})
	if !rdma.Unavailable(err) {
		t.Fatalf("Open of a missing device: %v, want an Unavailable error", err)
	}
}

// TestVerbs runs everything that needs a device, as subtests (one skip on
// a host without RDMA, listed in ci/allowed-skips.txt).
func TestVerbs(t *testing.T) {
	d := openOrSkip(t)
	t.Logf("device %s GID[%d]=%s MTU %d", d.Name(), d.GIDIndex(), d.GID(), d.MTU())

	t.Run("Devices", func(t *testing.T) {
		names, err := rdma.Devices()
		if err != nil || !slices.Contains(names, d.Name()) {
			t.Fatalf("Devices() = %v, %v; want %s in it", names, err, d.Name())
		}
		if d.GID().IsZero() || d.MTU() < 256 {
			t.Fatalf("GID %s MTU %d", d.GID(), d.MTU())
		}
	})

	t.Run("ReadCompare", func(t *testing.T) {
		const n = 1 << 20
		remote := region(t, d, n, rdma.AccessRemoteRead)
		local := region(t, d, n, rdma.AccessLocalWrite)
		fill(remote.Bytes(), 3)
		a, _ := pair(t, d, rdma.QPConfig{})
		rr := remote.Region()
		// one 4 KiB READ, one large READ, a batch of 64 scattered READs
		if err := a.Read(context.Background(), rdma.ReadOp{Local: local, Length: 4096, RemoteAddr: rr.Addr, RKey: rr.RKey}); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(local.Bytes()[:4096], remote.Bytes()[:4096]) {
			t.Fatal("4 KiB READ: bytes differ")
		}
		if err := a.Read(context.Background(), rdma.ReadOp{Local: local, Length: n, RemoteAddr: rr.Addr, RKey: rr.RKey}); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(local.Bytes(), remote.Bytes()) {
			t.Fatal("1 MiB READ: bytes differ")
		}
		clear(local.Bytes())
		fill(remote.Bytes(), 99)
		var ops []rdma.ReadOp
		for i := range 64 {
			off := (i * 7919 * 64) % (n - 4160)
			ops = append(ops, rdma.ReadOp{Local: local, Offset: i * 4160, Length: 4160, RemoteAddr: rr.Addr + uint64(off), RKey: rr.RKey})
		}
		if err := a.Read(context.Background(), ops...); err != nil {
			t.Fatal(err)
		}
		for i, op := range ops {
			off := int(op.RemoteAddr - rr.Addr)
			if !bytes.Equal(local.Bytes()[op.Offset:op.Offset+op.Length], remote.Bytes()[off:off+op.Length]) {
				t.Fatalf("batch READ %d: bytes differ", i)
			}
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		const workers, iters, size = 8, 100, 4096
		remote := region(t, d, workers*size, rdma.AccessRemoteRead)
		local := region(t, d, workers*size, rdma.AccessLocalWrite)
		fill(remote.Bytes(), 11)
		a, _ := pair(t, d, rdma.QPConfig{MaxOutstanding: 4})
		rr := remote.Region()
		var wg sync.WaitGroup
		errs := make(chan error, workers)
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range iters {
					off := w * size
					clear(local.Bytes()[off : off+size])
					if err := a.Read(context.Background(), rdma.ReadOp{Local: local, Offset: off, Length: size, RemoteAddr: rr.Addr + uint64(off), RKey: rr.RKey}); err != nil {
						errs <- fmt.Errorf("worker %d read %d: %w", w, i, err)
						return
					}
					if !bytes.Equal(local.Bytes()[off:off+size], remote.Bytes()[off:off+size]) {
						errs <- fmt.Errorf("worker %d read %d: bytes differ", w, i)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})

	t.Run("BadRKey", func(t *testing.T) {
		remote := region(t, d, 8192, rdma.AccessRemoteRead)
		local := region(t, d, 8192, rdma.AccessLocalWrite)
		a, _ := pair(t, d, rdma.QPConfig{})
		rr := remote.Region()
		err := a.Read(context.Background(), rdma.ReadOp{Local: local, Length: 4096, RemoteAddr: rr.Addr, RKey: rr.RKey ^ 0x5a5a00})
		var ce *rdma.CompletionError
		if !errors.As(err, &ce) || ce.Status != rdma.StatusRemoteAccessError {
			t.Fatalf("READ with a bad rkey: %v, want a remote access error", err)
		}
		t.Logf("bad rkey: %v", err)
		err = a.Read(context.Background(), rdma.ReadOp{Local: local, Length: 4096, RemoteAddr: rr.Addr, RKey: rr.RKey})
		if !errors.Is(err, rdma.ErrQPBroken) {
			t.Fatalf("READ on the broken QP: %v, want ErrQPBroken", err)
		}
	})

	t.Run("OutOfBounds", func(t *testing.T) {
		remote := region(t, d, 8192, rdma.AccessRemoteRead)
		local := region(t, d, 8192, rdma.AccessLocalWrite)
		a, _ := pair(t, d, rdma.QPConfig{})
		rr := remote.Region()
		err := a.Read(context.Background(), rdma.ReadOp{Local: local, Length: 4096, RemoteAddr: rr.Addr + 6000, RKey: rr.RKey})
		var ce *rdma.CompletionError
		if !errors.As(err, &ce) {
			t.Fatalf("READ past the region's end: %v, want a completion error", err)
		}
		t.Logf("out of bounds: %v", err)
		// a local range outside the local MR is refused before posting
		b, _ := pair(t, d, rdma.QPConfig{})
		if err := b.Read(context.Background(), rdma.ReadOp{Local: local, Offset: 8000, Length: 4096, RemoteAddr: rr.Addr, RKey: rr.RKey}); err == nil {
			t.Fatal("READ into a range past the local region accepted")
		}
	})

	t.Run("PeerGone", func(t *testing.T) {
		remote := region(t, d, 8192, rdma.AccessRemoteRead)
		local := region(t, d, 8192, rdma.AccessLocalWrite)
		a, b := pair(t, d, rdma.QPConfig{TimeoutExponent: 10, RetryCount: 2})
		rr := remote.Region()
		if err := a.Read(context.Background(), rdma.ReadOp{Local: local, Length: 64, RemoteAddr: rr.Addr, RKey: rr.RKey}); err != nil {
			t.Fatal(err)
		}
		if err := b.Close(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		start := time.Now()
		err := a.Read(ctx, rdma.ReadOp{Local: local, Length: 64, RemoteAddr: rr.Addr, RKey: rr.RKey})
		if err == nil {
			t.Fatal("READ from a destroyed QP succeeded")
		}
		if ctx.Err() != nil {
			t.Fatalf("READ from a destroyed QP hung until the test deadline: %v", err)
		}
		t.Logf("peer gone after %v: %v", time.Since(start).Round(time.Millisecond), err)
	})

	t.Run("Cancel", func(t *testing.T) {
		remote := region(t, d, 8192, rdma.AccessRemoteRead)
		local := region(t, d, 8192, rdma.AccessLocalWrite)
		a, b := pair(t, d, rdma.QPConfig{})
		rr := remote.Region()
		b.Close() // with the default timeout a READ now takes seconds to fail
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := a.Read(ctx, rdma.ReadOp{Local: local, Length: 64, RemoteAddr: rr.Addr, RKey: rr.RKey})
		if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, rdma.ErrQPBroken) {
			t.Fatalf("cancelled READ: %v", err)
		}
		if el := time.Since(start); el > 3*time.Second {
			t.Fatalf("cancelled READ returned after %v", el)
		}
		t.Logf("cancelled READ: %v", err)
	})

	t.Run("Latency", func(t *testing.T) {
		remote := region(t, d, 1<<16, rdma.AccessRemoteRead)
		local := region(t, d, 1<<16, rdma.AccessLocalWrite)
		a, _ := pair(t, d, rdma.QPConfig{})
		rr := remote.Region()
		for _, size := range []int{2, 4096, 4160} {
			lat := make([]time.Duration, 0, 2000)
			for i := range 2200 {
				start := time.Now()
				if err := a.Read(context.Background(), rdma.ReadOp{Local: local, Length: size, RemoteAddr: rr.Addr, RKey: rr.RKey}); err != nil {
					t.Fatal(err)
				}
				if i >= 200 {
					lat = append(lat, time.Since(start))
				}
			}
			slices.Sort(lat)
			p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
			// a line ci/rxe-run.sh picks up to compare with ib_read_lat
			fmt.Printf("RDMA-LAT verbs size=%d p50_us=%.2f p99_us=%.2f\n", size, us(p50), us(p99))
		}
		// A slot of 4160 bytes as two READs posted together (page, then
		// header), each within one 4096-byte MTU packet, against the one
		// READ of two packets above.
		lat := make([]time.Duration, 0, 2000)
		for i := range 2200 {
			start := time.Now()
			if err := a.Read(context.Background(), rdma.ReadOp{Local: local, Offset: 64, Length: 4096, RemoteAddr: rr.Addr + 64, RKey: rr.RKey},
				rdma.ReadOp{Local: local, Length: 64, RemoteAddr: rr.Addr, RKey: rr.RKey}); err != nil {
				t.Fatal(err)
			}
			if i >= 200 {
				lat = append(lat, time.Since(start))
			}
		}
		slices.Sort(lat)
		t.Logf("4160 bytes as READs of 4096+64 posted together: p50 %.2f us, p99 %.2f us", us(lat[len(lat)/2]), us(lat[len(lat)*99/100]))
	})

	t.Run("CloseRefusedWithOpenObjects", func(t *testing.T) {
		d2 := openOrSkip(t)
		q, err := d2.NewQP(rdma.QPConfig{})
		if err != nil {
			t.Fatal(err)
		}
		if err := d2.Close(); err == nil {
			t.Fatal("device closed with a QP open")
		}
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
