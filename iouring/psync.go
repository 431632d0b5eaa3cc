package iouring

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// psyncEngine is the fallback: one blocking system call per request on the
// calling goroutine's thread.
type psyncEngine struct {
	closed atomic.Bool
	mu     sync.RWMutex // guards regs
	regs   [][]byte
}

var _ Engine = (*psyncEngine)(nil)

func newPsync() *psyncEngine { return &psyncEngine{} }

// Name returns "psync".
func (e *psyncEngine) Name() string { return KindPsync }

func (e *psyncEngine) check(ctx context.Context, op string, fd int, off int64, n int) error {
	if e.closed.Load() {
		return opError(op, fd, off, n, ErrClosed)
	}
	if err := ctx.Err(); err != nil {
		return opError(op, fd, off, n, err)
	}
	return nil
}

// ReadAt reads with pread until buf is full or end of file.
func (e *psyncEngine) ReadAt(ctx context.Context, fd int, buf []byte, off int64) (int, error) {
	if err := e.check(ctx, "read", fd, off, len(buf)); err != nil {
		return 0, err
	}
	return readFull("read", fd, buf, off, func(b []byte, o int64) (int, error) {
		return retryEINTR(func() (int, error) { return unix.Pread(fd, b, o) })
	})
}

// WriteAt writes with pwrite until buf is written or an error occurs.
func (e *psyncEngine) WriteAt(ctx context.Context, fd int, buf []byte, off int64) (int, error) {
	if err := e.check(ctx, "write", fd, off, len(buf)); err != nil {
		return 0, err
	}
	return writeFull("write", fd, buf, off, func(b []byte, o int64) (int, error) {
		return retryEINTR(func() (int, error) { return unix.Pwrite(fd, b, o) })
	})
}

// ReadFixed checks that buf lies in registered buffer bufIndex and reads
// with pread.
func (e *psyncEngine) ReadFixed(ctx context.Context, fd int, buf []byte, off int64, bufIndex int) (int, error) {
	if err := e.checkFixed(buf, bufIndex); err != nil {
		return 0, opError("read_fixed", fd, off, len(buf), err)
	}
	return e.ReadAt(ctx, fd, buf, off)
}

// WriteFixed checks that buf lies in registered buffer bufIndex and writes
// with pwrite.
func (e *psyncEngine) WriteFixed(ctx context.Context, fd int, buf []byte, off int64, bufIndex int) (int, error) {
	if err := e.checkFixed(buf, bufIndex); err != nil {
		return 0, opError("write_fixed", fd, off, len(buf), err)
	}
	return e.WriteAt(ctx, fd, buf, off)
}

func (e *psyncEngine) checkFixed(buf []byte, idx int) error {
	e.mu.RLock()
	defer e.mu.RUnlock()
	return checkFixed(e.regs, buf, idx)
}

// Fsync calls fsync(2).
func (e *psyncEngine) Fsync(ctx context.Context, fd int) error {
	if err := e.check(ctx, "fsync", fd, 0, 0); err != nil {
		return err
	}
	if _, err := retryEINTR(func() (int, error) { return 0, unix.Fsync(fd) }); err != nil {
		return opError("fsync", fd, 0, 0, err)
	}
	return nil
}

// Fdatasync calls fdatasync(2).
func (e *psyncEngine) Fdatasync(ctx context.Context, fd int) error {
	if err := e.check(ctx, "fdatasync", fd, 0, 0); err != nil {
		return err
	}
	if _, err := retryEINTR(func() (int, error) { return 0, unix.Fdatasync(fd) }); err != nil {
		return opError("fdatasync", fd, 0, 0, err)
	}
	return nil
}

// RegisterBuffers records bufs so that ReadFixed and WriteFixed check
// their arguments as the io_uring engine does.
func (e *psyncEngine) RegisterBuffers(bufs [][]byte) error {
	if e.closed.Load() {
		return fmt.Errorf("iouring register buffers: %w", ErrClosed)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.regs = append([][]byte(nil), bufs...)
	return nil
}

// Close makes later requests fail with ErrClosed. Requests already in a
// system call finish on their own threads.
func (e *psyncEngine) Close() error {
	e.closed.Store(true)
	return nil
}

// checkFixed reports whether buf lies inside regs[idx] (EINVAL if not, as
// the kernel says for a fixed I/O outside its buffer).
func checkFixed(regs [][]byte, buf []byte, idx int) error {
	if idx < 0 || idx >= len(regs) {
		return fmt.Errorf("fixed buffer %d not registered (%d registered): %w", idx, len(regs), unix.EINVAL)
	}
	if len(buf) == 0 {
		return nil
	}
	r := regs[idx]
	start := uintptr(unsafe.Pointer(unsafe.SliceData(r)))
	p := uintptr(unsafe.Pointer(unsafe.SliceData(buf)))
	if p < start || p+uintptr(len(buf)) > start+uintptr(len(r)) {
		return fmt.Errorf("buffer outside fixed buffer %d: %w", idx, unix.EINVAL)
	}
	return nil
}

// readFull repeats read until buf is full or a read returns 0 (end of
// file). A short read whose length is not a multiple of 512 bytes can only
// be end of file; it ends the loop without another read, which under
// O_DIRECT would be misaligned and fail with EINVAL.
func readFull(op string, fd int, buf []byte, off int64, read func([]byte, int64) (int, error)) (int, error) {
	done := 0
	for done < len(buf) {
		n, err := read(buf[done:], off+int64(done))
		if err != nil {
			return done, opError(op, fd, off, len(buf), err)
		}
		done += n
		if n == 0 || n%512 != 0 {
			break
		}
	}
	return done, nil
}

// writeFull repeats write until buf is written; a write of 0 bytes without
// an error is reported as EIO.
func writeFull(op string, fd int, buf []byte, off int64, write func([]byte, int64) (int, error)) (int, error) {
	done := 0
	for done < len(buf) {
		n, err := write(buf[done:], off+int64(done))
		if err != nil {
			return done, opError(op, fd, off, len(buf), err)
		}
		if n == 0 {
			return done, opError(op, fd, off, len(buf), fmt.Errorf("wrote 0 bytes: %w", unix.EIO))
		}
		done += n
	}
	return done, nil
}

func retryEINTR(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if err != unix.EINTR {
			return n, err
		}
	}
}
