package fs_test

import (
	"slices"
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"

	"github.com/datenlord/datenlord-go/fs/fstest"
)

// posixSkips lists the posixtest cases that cannot apply, with the reason.
var posixSkips = map[string]string{
	// The case takes a classic (process-owned) F_SETLK write lock through
	// one descriptor and expects a read lock through a second descriptor of
	// the SAME process to fail with EAGAIN. POSIX says a process never
	// conflicts with its own locks (go-fuse's loopback passes only because
	// it maps them to OFD locks on the backing file). Locks here are the
	// kernel's local implementation, with POSIX semantics; TestLocks checks
	// the conflicts that POSIX does require (two processes, OFD locks,
	// flock between open file descriptions).
	"FcntlFlockLocksFile": "expects a process to conflict with its own POSIX lock, which POSIX forbids",
}

// TestPosix runs go-fuse's POSIX conformance suite, each case on a fresh
// mount.
func TestPosix(t *testing.T) {
	names := make([]string, 0, len(posixtest.All))
	for name := range posixtest.All {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			if why, ok := posixSkips[name]; ok {
				t.Skip("SKIP: " + why)
			}
			h := fstest.Start(t)
			posixtest.All[name](t, h.Mountpoint)
		})
	}
}
