package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/datenlord/datenlord-go/internal/mountinfo"
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
	mounted, fstype, err := mountinfo.Lookup(real)
	if err != nil {
		return fmt.Errorf("mount point %s: %w", dir, err)
	}
	if mounted {
		return fmt.Errorf("mount point %s is busy: a %s file system is already mounted there (is another datenlord-node serving it? unmount it with: umount %s)", dir, fstype, dir)
	}
	return nil
}
