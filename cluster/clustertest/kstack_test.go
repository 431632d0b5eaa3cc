package clustertest

import (
	"os"
	"strings"
	"testing"
)

// TestKernelStacks reads this test process's own threads: every thread is
// listed, with its name and a kernel stack (or the error reading it).
func TestKernelStacks(t *testing.T) {
	got := kernelStacks(os.Getpid())
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(got, "task "); n < len(tasks)/2 || n == 0 {
		t.Fatalf("kernelStacks listed %d tasks, /proc/self/task has %d:\n%s", n, len(tasks), got)
	}
	if !strings.Contains(got, "clustertest") {
		t.Errorf("no thread named after the test binary:\n%s", got)
	}
	if got := kernelStacks(-1); !strings.Contains(got, "no such file") {
		t.Errorf("kernelStacks(-1) = %q, want the read error", got)
	}
}
