package fs

import (
	"errors"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// toStatus maps an error to the errno returned to the kernel: a
// syscall.Errno anywhere in the chain is returned as is; anything else is
// an internal error, logged and reported as EIO. EXDEV is never returned
// (it would make mv copy across what is one file system).
func (fs *fileSystem) toStatus(op string, err error) fuse.Status {
	if err == nil {
		return fuse.OK
	}
	var errno syscall.Errno
	if errors.As(err, &errno) && errno != 0 && errno != syscall.EXDEV {
		return fuse.Status(errno)
	}
	fs.log.Error("fs: internal error", "op", op, "err", err)
	return fuse.EIO
}

// storeStatus maps a store error of a flush: ENOSPC and EDQUOT stay
// what they are (the application can react), everything else is EIO.
func (fs *fileSystem) storeStatus(op string, err error) fuse.Status {
	var errno syscall.Errno
	if errors.As(err, &errno) && (errno == syscall.ENOSPC || errno == syscall.EDQUOT) {
		fs.log.Warn("fs: flush failed", "op", op, "err", err)
		return fuse.Status(errno)
	}
	fs.log.Error("fs: flush failed", "op", op, "err", err)
	return fuse.EIO
}

// checkName returns ENAMETOOLONG for names the namespace cannot hold.
func checkName(name string) fuse.Status {
	if len(name) > 255 {
		return fuse.Status(syscall.ENAMETOOLONG)
	}
	return fuse.OK
}
