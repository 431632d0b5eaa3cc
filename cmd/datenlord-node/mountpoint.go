package main

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// checkMountpoint returns a clear error unless dir is an existing directory
// that nothing is mounted on. A missing or busy mount point is the most
// common start-up mistake, and the kernel's own errors for it (ENOENT from
// mount(2), or a silent stacked mount) do not say what to do.
func checkMountpoint(dir string) error {
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("mount point %s does not exist (create it with: mkdir -p %s)", dir, dir)
	case errors.Is(err, syscall.ENOTCONN):
		return fmt.Errorf("mount point %s is a dead FUSE mount left by a process that died (transport endpoint is not connected); clean it up with: umount -l %s", dir, dir)
	case err != nil:
		return fmt.Errorf("mount point %s: %w", dir, err)
	case !st.IsDir():
		return fmt.Errorf("mount point %s is not a directory", dir)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		return fmt.Errorf("mount point %s: %w", dir, err)
	}
	mounted, fstype, err := isMountpoint(real)
	if err != nil {
		return fmt.Errorf("mount point %s: %w", dir, err)
	}
	if mounted {
		return fmt.Errorf("mount point %s is busy: a %s file system is already mounted there (is another datenlord-node serving it? unmount it with: umount %s)", dir, fstype, dir)
	}
	return nil
}

// isMountpoint reports whether dir (absolute, symlinks resolved) is the
// mount point of a mount in this process's mount namespace, and the file
// system type of the topmost such mount.
func isMountpoint(dir string) (bool, string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, "", err
	}
	defer f.Close()
	found, fstype := false, ""
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || unescapeMountinfo(fields[4]) != dir {
			continue
		}
		found, fstype = true, "?"
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) {
				fstype = fields[i+1]
				break
			}
		}
	}
	return found, fstype, sc.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 for a space, ...) that
// the kernel writes for special characters in mountinfo paths.
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
