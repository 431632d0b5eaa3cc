package clustertest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// staleName matches what the harness names after its process: network
// namespaces dlt-<pid>-... and cluster directories .../dlcluster-<pid>-....
var staleName = regexp.MustCompile(`(?:^dlt-|/dlcluster-)(\d+)-`)

// sweepStale removes what a killed test process left behind: namespaces,
// (dead) mounts and directories named after a pid that no longer runs. Its node
// processes died with it (PR_SET_PDEATHSIG). Errors are logged, not fatal.
func sweepStale(t testing.TB) {
	if entries, err := os.ReadDir("/var/run/netns"); err == nil {
		for _, e := range entries {
			if ownerDead(e.Name()) {
				if out, err := exec.Command("ip", "netns", "del", e.Name()).CombinedOutput(); err != nil {
					t.Logf("clustertest: removing stale namespace %s: %v: %s", e.Name(), err, out)
				}
			}
		}
	}
	mounts, err := mountPoints()
	if err != nil {
		return
	}
	for _, m := range mounts {
		if ownerDead(m) {
			if err := LazyUnmount(m, 5*time.Second); err != nil {
				t.Logf("clustertest: removing stale mount: %v", err)
			}
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "dlcluster-*"))
	if mounts, err = mountPoints(); err != nil {
		return
	}
	for _, d := range dirs {
		if !ownerDead(d) || mountedUnder(mounts, d) {
			continue // never remove files through a mount
		}
		if err := os.RemoveAll(d); err != nil {
			t.Logf("clustertest: removing stale directory: %v", err)
		}
	}
}

// mountedUnder reports whether any of mounts is dir or inside it.
func mountedUnder(mounts []string, dir string) bool {
	for _, m := range mounts {
		if m == dir || strings.HasPrefix(m, dir+"/") {
			return true
		}
	}
	return false
}

// ownerDead reports whether name is the harness's and names a pid that
// no longer runs.
func ownerDead(name string) bool {
	m := staleName.FindStringSubmatch(name)
	if m == nil {
		return false
	}
	pid, err := strconv.Atoi(m[1])
	if err != nil || pid == os.Getpid() {
		return false
	}
	_, err = os.Stat("/proc/" + m[1])
	return os.IsNotExist(err)
}
