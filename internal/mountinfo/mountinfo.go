// Package mountinfo reads this process's mount table
// (/proc/self/mountinfo): which paths are mount points, and of which file
// system type.
package mountinfo

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// Mount is one line of the mount table.
type Mount struct {
	// Point is the mount point, unescaped.
	Point string
	// FSType is the file system type ("fuse.datenlord", "tmpfs", ...).
	FSType string
}

// Read returns the mounts of this process's mount namespace, in table
// order (a later mount on the same point is on top).
func Read() ([]Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	mounts, err := parse(f)
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	return mounts, nil
}

// Lookup reports whether path (absolute, symlinks resolved) is a mount
// point, and the file system type of the topmost mount on it.
func Lookup(path string) (found bool, fstype string, err error) {
	mounts, err := Read()
	if err != nil {
		return false, "", err
	}
	for _, m := range mounts {
		if m.Point == path {
			found, fstype = true, m.FSType
		}
	}
	return found, fstype, nil
}

// parse reads mountinfo lines such as
// "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw":
// field 5 is the mount point, and the field after "-" the type.
func parse(r io.Reader) ([]Mount, error) {
	var mounts []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		m := Mount{Point: Unescape(fields[4]), FSType: "?"}
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) {
				m.FSType = fields[i+1]
				break
			}
		}
		mounts = append(mounts, m)
	}
	return mounts, sc.Err()
}

// Unescape undoes the octal escapes (\040 for a space, ...) that the
// kernel writes for special characters in mountinfo paths.
func Unescape(s string) string {
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
