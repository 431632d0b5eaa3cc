package iouring

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var engineKinds = []string{KindUring, KindUringSQPoll, KindPsync}

// uringModes are the io_uring engine's three ways of running a ring: the
// owner thread (SINGLE_ISSUER|DEFER_TASKRUN), the pre-6.1 fallback
// (submitter thread and reaper), and SQPOLL.
var uringModes = []struct {
	name string
	cfg  Config
}{
	{"owner", Config{Kind: KindUring}},
	{"legacy", Config{Kind: KindUring, noOwner: true}},
	{"sqpoll", Config{Kind: KindUringSQPoll}},
}

// forEachEngine runs f as a subtest against every engine kind.
func forEachEngine(t *testing.T, f func(t *testing.T, e Engine)) {
	for _, name := range append(engineKinds, "uring-legacy") {
		kind, legacy := name, name == "uring-legacy"
		if legacy {
			kind = KindUring
		}
		t.Run(name, func(t *testing.T) {
			e, err := Open(Config{Kind: kind, Entries: 64, noOwner: legacy})
			if err != nil {
				t.Fatalf("open %s engine: %v", kind, err)
			}
			if e.Name() != kind {
				t.Fatalf("Name() = %q, want %q", e.Name(), kind)
			}
			t.Cleanup(func() {
				if err := e.Close(); err != nil {
					t.Error(err)
				}
			})
			f(t, e)
		})
	}
}

// directFile creates a file in a test directory opened with O_DIRECT where
// the file system allows it.
func directFile(t *testing.T) (int, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "data")
	fd, direct, err := OpenDirect(path, unix.O_RDWR|unix.O_CREAT, 0o600, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	if !direct {
		t.Logf("LOUD: %s does not support O_DIRECT; testing buffered I/O instead", filepath.Dir(path))
	}
	t.Cleanup(func() { _ = unix.Close(fd) })
	return fd, path
}

func alignedBuf(t *testing.T, n int) []byte {
	t.Helper()
	b, err := AllocAligned(n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = FreeAligned(b) })
	return b
}

func fill(b []byte, seed byte) {
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
}

func TestReadWriteFsync(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e Engine) {
		ctx := context.Background()
		fd, _ := directFile(t)
		arena := alignedBuf(t, 4*Alignment)
		if err := e.RegisterBuffers([][]byte{arena}); err != nil {
			t.Fatal(err)
		}
		cases := []struct {
			name  string
			fixed bool
			off   int64
			n     int
		}{
			{"plain one block", false, 0, Alignment},
			{"plain two blocks at 8K", false, 2 * Alignment, 2 * Alignment},
			{"fixed one block at 16K", true, 4 * Alignment, Alignment},
			{"fixed two blocks at 64K", true, 16 * Alignment, 2 * Alignment},
		}
		for i, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				w, r := arena[:tc.n], arena[2*Alignment:2*Alignment+tc.n]
				if !tc.fixed {
					w, r = alignedBuf(t, tc.n), alignedBuf(t, tc.n)
				}
				fill(w, byte(i+1))
				want := bytes.Clone(w)
				var n int
				var err error
				if tc.fixed {
					n, err = e.WriteFixed(ctx, fd, w, tc.off, 0)
				} else {
					n, err = e.WriteAt(ctx, fd, w, tc.off)
				}
				if err != nil || n != tc.n {
					t.Fatalf("write = %d, %v; want %d", n, err, tc.n)
				}
				if err := e.Fdatasync(ctx, fd); err != nil {
					t.Fatal(err)
				}
				if err := e.Fsync(ctx, fd); err != nil {
					t.Fatal(err)
				}
				clear(r)
				if tc.fixed {
					n, err = e.ReadFixed(ctx, fd, r, tc.off, 0)
				} else {
					n, err = e.ReadAt(ctx, fd, r, tc.off)
				}
				if err != nil || n != tc.n {
					t.Fatalf("read = %d, %v; want %d", n, err, tc.n)
				}
				if !bytes.Equal(r, want) {
					t.Fatal("read back different bytes")
				}
			})
		}
	})
}

func TestShortReadAtEOF(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e Engine) {
		ctx := context.Background()
		fd, path := directFile(t)
		want := make([]byte, 6000)
		fill(want, 9)
		if err := os.WriteFile(path, want, 0o600); err != nil {
			t.Fatal(err)
		}
		buf := alignedBuf(t, 2*Alignment)
		n, err := e.ReadAt(ctx, fd, buf, 0)
		if err != nil || n != len(want) {
			t.Fatalf("read 8K of a 6000-byte file = %d, %v; want 6000, nil", n, err)
		}
		if !bytes.Equal(buf[:n], want) {
			t.Fatal("wrong bytes")
		}
		n, err = e.ReadAt(ctx, fd, buf[:Alignment], 4*Alignment)
		if err != nil || n != 0 {
			t.Fatalf("read past EOF = %d, %v; want 0, nil", n, err)
		}
	})
}

func TestErrors(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e Engine) {
		ctx := context.Background()
		buf := alignedBuf(t, Alignment)
		badFD := 1 << 20
		if _, err := e.ReadAt(ctx, badFD, buf, 0); !errors.Is(err, unix.EBADF) {
			t.Errorf("read of a bad fd: %v, want EBADF", err)
		}
		if _, err := e.WriteAt(ctx, badFD, buf, 0); !errors.Is(err, unix.EBADF) {
			t.Errorf("write of a bad fd: %v, want EBADF", err)
		}
		if err := e.Fsync(ctx, badFD); !errors.Is(err, unix.EBADF) {
			t.Errorf("fsync of a bad fd: %v, want EBADF", err)
		}
		fd, _ := directFile(t)
		if _, err := e.ReadFixed(ctx, fd, buf, 0, 3); !errors.Is(err, unix.EINVAL) {
			t.Errorf("read into an unregistered fixed buffer: %v, want EINVAL", err)
		}
		if err := e.RegisterBuffers([][]byte{alignedBuf(t, Alignment)}); err != nil {
			t.Fatal(err)
		}
		if _, err := e.ReadFixed(ctx, fd, buf, 0, 0); !errors.Is(err, unix.EINVAL) {
			t.Errorf("fixed read outside the registered buffer: %v, want EINVAL", err)
		}
	})
}

// TestConcurrent runs more callers than the kernel completes per
// io_uring_enter on a DEFER_TASKRUN ring (20 since Linux 6.13), so rounds
// that leave completions for the next call are exercised; and it runs them
// with one P too, where a ring owner that slept in the kernel holding its P
// starved every caller until sysmon took the P back.
func TestConcurrent(t *testing.T) {
	for _, procs := range []int{runtime.GOMAXPROCS(0), 1} {
		t.Run(fmt.Sprintf("GOMAXPROCS=%d", procs), func(t *testing.T) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
			forEachEngine(t, func(t *testing.T, e Engine) {
				ctx := context.Background()
				fd, _ := directFile(t)
				const workers, ops = 64, 40
				arena := alignedBuf(t, workers*2*Alignment)
				var wg sync.WaitGroup
				errs := make(chan error, workers)
				for w := range workers {
					wg.Go(func() {
						wbuf := arena[2*w*Alignment : (2*w+1)*Alignment]
						rbuf := arena[(2*w+1)*Alignment : (2*w+2)*Alignment]
						for i := range ops {
							off := int64((w*ops + i) * Alignment)
							fill(wbuf, byte(w*ops+i))
							if _, err := e.WriteAt(ctx, fd, wbuf, off); err != nil {
								errs <- err
								return
							}
							if n, err := e.ReadAt(ctx, fd, rbuf, off); err != nil || n != Alignment {
								errs <- fmt.Errorf("read %d: %d, %v", off, n, err)
								return
							}
							if !bytes.Equal(rbuf, wbuf) {
								errs <- fmt.Errorf("worker %d op %d read back different bytes", w, i)
								return
							}
						}
					})
				}
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Error(err)
				}
			})
		})
	}
}

func TestCancelBeforeSubmit(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e Engine) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		fd, _ := directFile(t)
		if _, err := e.ReadAt(ctx, fd, alignedBuf(t, Alignment), 0); !errors.Is(err, context.Canceled) {
			t.Fatalf("read with a cancelled context: %v, want context.Canceled", err)
		}
	})
}

// TestCancelInFlight reads a pipe that never gets data: the read sits in
// the ring until ctx is cancelled, and must return only after the kernel
// has let go of the buffer. (psync cannot interrupt a blocking system
// call, so this is io_uring only.)
func TestCancelInFlight(t *testing.T) {
	for _, m := range uringModes {
		t.Run(m.name, func(t *testing.T) { testCancelInFlight(t, m.cfg) })
	}
}

func testCancelInFlight(t *testing.T, cfg Config) {
	e, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(p[0])
	defer unix.Close(p[1])
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	buf := make([]byte, 64)
	start := time.Now()
	_, err = e.ReadAt(ctx, p[0], buf, -1) // offset -1: the pipe's current position
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("read of an idle pipe with a 50ms deadline: %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("cancel took %v", d)
	}
	// The slot is reusable: the engine still works.
	if _, err := unix.Write(p[1], []byte("x")); err != nil {
		t.Fatal(err)
	}
	if n, err := e.ReadAt(context.Background(), p[0], buf[:1], -1); err != nil || n != 1 {
		t.Fatalf("read after cancel = %d, %v", n, err)
	}
}

func TestCloseWithRequestsInFlight(t *testing.T) {
	forEachEngine(t, func(t *testing.T, e Engine) {
		ctx := context.Background()
		fd, _ := directFile(t)
		arena := alignedBuf(t, 16*Alignment)
		if _, err := e.WriteAt(ctx, fd, arena, 0); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 16)
		for w := range 16 {
			wg.Go(func() {
				buf := arena[w*Alignment : (w+1)*Alignment]
				for {
					if _, err := e.ReadAt(ctx, fd, buf, int64(w*Alignment)); err != nil {
						if !errors.Is(err, ErrClosed) {
							errs <- err
						}
						return
					}
				}
			})
		}
		time.Sleep(20 * time.Millisecond)
		if err := e.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("request racing Close: %v (want success or ErrClosed)", err)
		}
		if _, err := e.ReadAt(ctx, fd, arena[:Alignment], 0); !errors.Is(err, ErrClosed) {
			t.Fatalf("read after Close: %v, want ErrClosed", err)
		}
	})
}

func TestOpenKinds(t *testing.T) {
	e, err := Open(Config{Kind: KindAuto, setupErr: unix.EPERM})
	if err != nil {
		t.Fatal(err)
	}
	if e.Name() != KindPsync {
		t.Errorf("auto with io_uring refused: engine %q, want psync", e.Name())
	}
	_ = e.Close()
	if _, err := Open(Config{Kind: KindUring, setupErr: unix.ENOSYS}); !errors.Is(err, unix.ENOSYS) {
		t.Errorf("uring with io_uring refused: %v, want ENOSYS", err)
	}
	if _, err := Open(Config{Kind: "spdk"}); err == nil {
		t.Error("unknown kind accepted")
	}
	e, err = Open(Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("auto picked %q on this kernel", e.Name())
	_ = e.Close()
}

// TestNotBlockedByPendingRequest checks that a request submitted while
// another waits indefinitely (a read of an idle pipe) is not held back
// behind it: the ring owner must be woken out of its wait for completions.
func TestNotBlockedByPendingRequest(t *testing.T) {
	for _, m := range uringModes {
		t.Run(m.name, func(t *testing.T) {
			e, err := Open(m.cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()
			var p [2]int
			if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
				t.Fatal(err)
			}
			defer unix.Close(p[0])
			defer unix.Close(p[1])
			readDone := make(chan error, 1)
			go func() {
				buf := make([]byte, 1)
				_, err := e.ReadAt(context.Background(), p[0], buf, -1)
				readDone <- err
			}()
			time.Sleep(20 * time.Millisecond) // let the pipe read reach the kernel
			f, err := os.Create(filepath.Join(t.TempDir(), "f"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			for i := range 100 {
				if _, err := e.WriteAt(ctx, int(f.Fd()), []byte("hello"), int64(i*5)); err != nil {
					t.Fatalf("write %d while a pipe read is pending: %v", i, err)
				}
			}
			// Registration runs on the owner thread, which must be woken too.
			buf, err := AllocAligned(4096)
			if err != nil {
				t.Fatal(err)
			}
			defer FreeAligned(buf)
			if err := e.RegisterBuffers([][]byte{buf}); err != nil {
				t.Fatal(err)
			}
			if _, err := e.WriteFixed(ctx, int(f.Fd()), buf, 4096, 0); err != nil {
				t.Fatal(err)
			}
			if err := e.RegisterBuffers(nil); err != nil {
				t.Fatal(err)
			}
			if _, err := unix.Write(p[1], []byte("x")); err != nil {
				t.Fatal(err)
			}
			if err := <-readDone; err != nil {
				t.Fatal(err)
			}
		})
	}
}
