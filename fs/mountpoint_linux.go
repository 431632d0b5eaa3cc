package fs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/datenlord/datenlord-go/internal/mountinfo"
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
	mounted, _, err := mountinfo.Lookup(real)
	if err != nil {
		return "", fmt.Errorf("fs: mount point %s: %w", real, err)
	}
	if mounted {
		return "", fmt.Errorf("fs: mount point %s is busy: something is already mounted there", real)
	}
	return real, nil
}
