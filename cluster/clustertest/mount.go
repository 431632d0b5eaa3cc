package clustertest

import (
	"fmt"
	"os/exec"
	"strings"
	"time"

	"github.com/datenlord/datenlord-go/internal/mountinfo"

	"golang.org/x/sys/unix"
)

// fuseSuperMagic is statfs(2)'s f_type of a FUSE file system.
const fuseSuperMagic = 0x65735546

// IsServing reports whether dir is a live FUSE mount: statfs succeeds and
// reports FUSE. A dead mount (its process died) fails with ENOTCONN.
func IsServing(dir string) bool {
	var st unix.Statfs_t
	return unix.Statfs(dir, &st) == nil && st.Type == fuseSuperMagic
}

// IsMounted reports whether anything is mounted at dir (absolute, without
// symlinks) per /proc/self/mountinfo. Unlike [IsServing] it also sees the
// dead mount a killed node leaves behind.
func IsMounted(dir string) bool {
	mounts, err := mountPoints()
	if err != nil {
		return false
	}
	for _, m := range mounts {
		if m == dir {
			return true
		}
	}
	return false
}

// LazyUnmount detaches whatever is mounted at dir (umount -l: after a
// crash the kernel keeps the dead FUSE mount until it is unmounted) and
// waits up to timeout until dir is no longer a mount point.
func LazyUnmount(dir string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for IsMounted(dir) {
		out, err := exec.Command("umount", "-l", dir).CombinedOutput()
		if time.Now().After(deadline) {
			return fmt.Errorf("%s is still a mount point after umount -l (last: %v: %s)", dir, err, strings.TrimSpace(string(out)))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// mountPoints lists the mount points of this process's mount namespace.
func mountPoints() ([]string, error) {
	mounts, err := mountinfo.Read()
	if err != nil {
		return nil, err
	}
	points := make([]string, len(mounts))
	for i, m := range mounts {
		points[i] = m.Point
	}
	return points, nil
}
