package iouring

import (
	"errors"
	"fmt"
	"log/slog"

	"golang.org/x/sys/unix"
)

// Alignment is the buffer, offset and length alignment this package
// assumes for O_DIRECT: 4 KiB covers the logical block size of every
// device in use (512 or 4096 bytes).
const Alignment = 4096

// AllocAligned returns n bytes (rounded up to Alignment) of zeroed,
// page-aligned memory mapped outside the Go heap: it never moves, is never
// scanned by the garbage collector, and suits O_DIRECT and RegisterBuffers.
// Release it with FreeAligned.
func AllocAligned(n int) ([]byte, error) {
	if n <= 0 {
		return nil, fmt.Errorf("iouring alloc aligned: size %d: %w", n, unix.EINVAL)
	}
	n = (n + Alignment - 1) &^ (Alignment - 1)
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("iouring alloc aligned: mmap %d bytes: %w", n, err)
	}
	return b, nil
}

// FreeAligned unmaps memory from AllocAligned. The memory must not be
// registered with an open engine or in use by I/O.
func FreeAligned(b []byte) error {
	if b == nil {
		return nil
	}
	if err := unix.Munmap(b[:cap(b)]); err != nil {
		return fmt.Errorf("iouring free aligned: munmap %d bytes: %w", cap(b), err)
	}
	return nil
}

// OpenDirect opens path with flags|O_DIRECT|O_CLOEXEC. If the file system
// refuses O_DIRECT (EINVAL: tmpfs, some overlay set-ups) it opens the file
// without it, logs a warning, and returns direct == false: I/O then goes
// through the page cache, correct but double-caching.
func OpenDirect(path string, flags int, perm uint32, log *slog.Logger) (fd int, direct bool, err error) {
	if log == nil {
		log = slog.Default()
	}
	fd, err = retryEINTR(func() (int, error) { return unix.Open(path, flags|unix.O_DIRECT|unix.O_CLOEXEC, perm) })
	if err == nil {
		return fd, true, nil
	}
	if !errors.Is(err, unix.EINVAL) {
		return -1, false, fmt.Errorf("iouring open %s with O_DIRECT: %w", path, err)
	}
	fd, err = retryEINTR(func() (int, error) { return unix.Open(path, flags|unix.O_CLOEXEC, perm) })
	if err != nil {
		return -1, false, fmt.Errorf("iouring open %s: %w", path, err)
	}
	log.Warn("O_DIRECT NOT SUPPORTED on this file system; using buffered I/O (the page cache will hold a second copy of cached pages)",
		"path", path)
	return fd, false, nil
}
