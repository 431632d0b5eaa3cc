package clustertest

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

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
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 {
			mounts = append(mounts, unescapeMountinfo(fields[4]))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return mounts, nil
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) that the
// kernel writes for special characters in mountinfo paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
