package main

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// dataDirLock is an exclusive flock on <data-dir>/LOCK, held for the life of
// the process. The kernel drops it when the process dies, even by SIGKILL,
// so a crashed node never leaves a lock behind.
type dataDirLock struct{ f *os.File }

// errDataDirInUse formats the error for a data dir owned by another process.
func errDataDirInUse(dataDir string, pid int) error {
	if pid > 0 {
		return fmt.Errorf("data dir %s is in use by another datenlord-node process (pid %d)", dataDir, pid)
	}
	return fmt.Errorf("data dir %s is in use by another datenlord-node process", dataDir)
}

// lockDataDir takes the lock on path (the LOCK file of dataDir) without
// waiting and records this process's pid in it for the error message of the
// next one.
func lockDataDir(dataDir, path string) (*dataDirLock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, errDataDirInUse(dataDir, readPid(f))
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &dataDirLock{f: f}, nil
}

// readPid returns the pid recorded in a lock file, 0 if there is none.
func readPid(f *os.File) int {
	buf := make([]byte, 32)
	n, _ := f.ReadAt(buf, 0)
	pid, err := strconv.Atoi(strings.TrimSpace(string(buf[:n])))
	if err != nil {
		return 0
	}
	return pid
}

// Close releases the lock.
func (l *dataDirLock) Close() error { return l.f.Close() }
