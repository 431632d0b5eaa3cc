package store

import (
	"golang.org/x/sys/unix"
)

// fileIO is the seam under every file operation of the local backend. Today
// it is plain syscalls (pread/pwrite/fsync); a later issue submits the same
// operations through io_uring, and tests wrap it to inject errors or record
// the durability order (write, fsync, rename, fsync dir).
//
// Every method returns the raw errno (a syscall.Errno) so that callers can
// wrap it with context while errors.Is(err, syscall.ENOSPC) keeps working.
type fileIO interface {
	// CreateExcl creates path for writing; it fails if path exists.
	CreateExcl(path string, perm uint32) (fd int, err error)
	// OpenRead opens path read-only.
	OpenRead(path string) (fd int, err error)
	// OpenDir opens a directory so it can be fsynced.
	OpenDir(path string) (fd int, err error)
	// Pwrite writes p at off; a short count comes with a non-nil error.
	Pwrite(fd int, p []byte, off int64) (int, error)
	// Pread reads into p at off; 0 with a nil error is end of file.
	Pread(fd int, p []byte, off int64) (int, error)
	// Fsync flushes fd's data and metadata to stable storage.
	Fsync(fd int) error
	// Close closes fd.
	Close(fd int) error
	// Rename atomically replaces newpath with oldpath.
	Rename(oldpath, newpath string) error
	// Mkdir creates a directory; an existing one is unix.EEXIST.
	Mkdir(path string, perm uint32) error
	// Unlink removes a file.
	Unlink(path string) error
}

// syscallIO is fileIO over plain system calls.
type syscallIO struct{}

var _ fileIO = syscallIO{}

func (syscallIO) CreateExcl(path string, perm uint32) (int, error) {
	return retryEINTR(func() (int, error) {
		return unix.Open(path, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, perm)
	})
}

func (syscallIO) OpenRead(path string) (int, error) {
	return retryEINTR(func() (int, error) {
		return unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	})
}

func (syscallIO) OpenDir(path string) (int, error) {
	return retryEINTR(func() (int, error) {
		return unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	})
}

func (syscallIO) Pwrite(fd int, p []byte, off int64) (int, error) {
	written := 0
	for written < len(p) {
		n, err := unix.Pwrite(fd, p[written:], off+int64(written))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return written, err
		}
		if n == 0 {
			return written, unix.EIO
		}
		written += n
	}
	return written, nil
}

func (syscallIO) Pread(fd int, p []byte, off int64) (int, error) {
	return retryEINTR(func() (int, error) { return unix.Pread(fd, p, off) })
}

func (syscallIO) Fsync(fd int) error {
	_, err := retryEINTR(func() (int, error) { return 0, unix.Fsync(fd) })
	return err
}

func (syscallIO) Close(fd int) error { return unix.Close(fd) }

func (syscallIO) Rename(oldpath, newpath string) error { return unix.Rename(oldpath, newpath) }

func (syscallIO) Mkdir(path string, perm uint32) error { return unix.Mkdir(path, perm) }

func (syscallIO) Unlink(path string) error { return unix.Unlink(path) }

func retryEINTR(f func() (int, error)) (int, error) {
	for {
		n, err := f()
		if err != unix.EINTR {
			return n, err
		}
	}
}
