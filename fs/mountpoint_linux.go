package fs

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// checkMountpoint returns the absolute, symlink-free path of dir, or a
// clear error when it cannot be mounted on.
func checkMountpoint(dir string) (string, error) {
	if dir == "" {
		return "", errors.New("fs: no mount point given")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("fs: mount point %s: %w", dir, err)
	}
	fi, err := os.Stat(abs)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("fs: mount point %s does not exist", abs)
	}
	if err != nil {
		return "", fmt.Errorf("fs: mount point %s: %w", abs, err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("fs: mount point %s is not a directory", abs)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		return "", fmt.Errorf("fs: mount point %s: %w", abs, err)
	}
	mounted, err := isMountPoint(real)
	if err != nil {
		return "", fmt.Errorf("fs: mount point %s: %w", real, err)
	}
	if mounted {
		return "", fmt.Errorf("fs: mount point %s is busy: something is already mounted there", real)
	}
	return real, nil
}

// isMountPoint reports whether path is listed as a mount point in
// /proc/self/mountinfo.
func isMountPoint(path string) (bool, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		if unescapeMountinfo(fields[4]) == path {
			return true, nil
		}
	}
	return false, sc.Err()
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) of
// /proc/self/mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
