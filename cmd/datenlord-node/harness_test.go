package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/datenlord/datenlord-go/internal/mountinfo"
)

// The end-to-end tests build the binary once and run it as a real process
// with real mounts. Tests that mount need root and /dev/fuse (CI runs as
// root); they are skipped otherwise.

const (
	// processDeadline bounds every process a test starts: it is killed when
	// the deadline passes, so a hung node cannot hang the test run.
	processDeadline = 3 * time.Minute
	// readyTimeout bounds how long a node may take to mount.
	readyTimeout = 60 * time.Second
	// exitTimeout bounds a clean shutdown after SIGTERM/SIGINT.
	exitTimeout = 60 * time.Second
)

// testBinary is the path of the datenlord-node binary built by TestMain. It
// is written once, before any test runs.
var testBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "datenlord-node-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: temp dir:", err)
		os.Exit(1)
	}
	testBinary = filepath.Join(dir, "datenlord-node")
	goTool, err := exec.LookPath("go")
	if err != nil {
		goTool = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	build := exec.Command(goTool, "build", "-ldflags", "-X main.version=e2e-test -X main.commit=e2e-commit", "-o", testBinary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building datenlord-node:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// requireFUSE skips tests that mount unless they can.
func requireFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse (run make deps)")
	}
}

// requireRoot skips tests that need root (to mount a tmpfs).
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
}

// syncBuffer is a bytes.Buffer safe for a process to write while a test
// reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// result is the outcome of a command that ran to completion.
type result struct {
	stdout, stderr string
	code           int
}

// runCLI runs the binary to completion with extra environment variables.
func runCLI(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), processDeadline)
	defer cancel()
	cmd := exec.CommandContext(ctx, testBinary, args...)
	cmd.Env = append(cleanEnv(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run %v: %v", args, err)
	}
	return result{stdout.String(), stderr.String(), code}
}

// cleanEnv is this process's environment without DATENLORD_* variables,
// so that a developer's settings do not leak into the tests.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, envPrefix) {
			env = append(env, kv)
		}
	}
	return env
}

// node is a running `datenlord-node serve` process.
type node struct {
	t      *testing.T
	cmd    *exec.Cmd
	mount  string
	stderr *syncBuffer
	done   chan struct{} // closed when the process has exited
	err    error         // the Wait error, valid after done
}

// startNode starts `datenlord-node serve args...` that mounts at mount. The
// test's cleanup kills it if it still runs and lazily unmounts mount, so a
// failing test never leaves a stale mount behind.
func startNode(t *testing.T, mount string, env []string, args ...string) *node {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), processDeadline)
	cmd := exec.CommandContext(ctx, testBinary, append([]string{"serve"}, args...)...)
	cmd.Env = append(cleanEnv(), env...)
	n := &node{t: t, cmd: cmd, mount: mount, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = n.stderr
	cmd.Stdout = n.stderr
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start serve: %v", err)
	}
	go func() {
		n.err = cmd.Wait()
		cancel()
		close(n.done)
	}()
	t.Cleanup(func() {
		select {
		case <-n.done:
		default:
			_ = cmd.Process.Kill()
			<-n.done
		}
		lazyUnmount(t, mount)
		if t.Failed() {
			t.Logf("serve %v stderr:\n%s", args, n.stderr.String())
		}
	})
	return n
}

// lazyUnmount detaches whatever is mounted at dir (after a crash the kernel
// keeps the dead FUSE mount until it is unmounted) and waits until dir is
// no longer a mount point.
func lazyUnmount(t *testing.T, dir string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for isMounted(dir) {
		_ = exec.Command("umount", "-l", dir).Run()
		if time.Now().After(deadline) {
			t.Errorf("%s is still a mount point after umount -l", dir)
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// isMounted reports whether anything is mounted at dir, per
// /proc/self/mountinfo. It also sees the dead mount a killed node leaves
// behind, which mountpoint(1) does not: it stats the directory and gets
// ENOTCONN.
func isMounted(dir string) bool {
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		real = dir // a dead FUSE mount cannot be resolved; dir is absolute already
	}
	mounted, _, err := mountinfo.Lookup(real)
	return err == nil && mounted
}

// isServing reports whether dir is a live mount point, as mountpoint -q
// says.
func isServing(dir string) bool {
	return exec.Command("mountpoint", "-q", dir).Run() == nil
}

// waitMounted waits until the node's mount point is a live mount point; it
// fails the test if the process exits first or the deadline passes.
func (n *node) waitMounted() {
	n.t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for !isServing(n.mount) {
		select {
		case <-n.done:
			n.t.Fatalf("serve exited before mounting %s: %v\n%s", n.mount, n.err, n.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s not mounted after %s\n%s", n.mount, readyTimeout, n.stderr.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// signal sends sig and waits for the process to exit; it returns the exit
// code.
func (n *node) signal(sig syscall.Signal) int {
	n.t.Helper()
	if err := n.cmd.Process.Signal(sig); err != nil {
		n.t.Fatalf("signal %v: %v", sig, err)
	}
	return n.wait(exitTimeout)
}

// wait waits for the process to exit and returns its exit code.
func (n *node) wait(timeout time.Duration) int {
	n.t.Helper()
	select {
	case <-n.done:
	case <-time.After(timeout):
		n.t.Fatalf("serve did not exit within %s\n%s", timeout, n.stderr.String())
	}
	var ee *exec.ExitError
	if errors.As(n.err, &ee) {
		return ee.ExitCode()
	}
	if n.err != nil {
		n.t.Fatalf("serve: %v", n.err)
	}
	return 0
}

// kill sends SIGKILL, waits for the process to die and cleans up the dead
// mount it leaves behind.
func (n *node) kill() {
	n.t.Helper()
	_ = n.cmd.Process.Kill()
	select {
	case <-n.done:
	case <-time.After(exitTimeout):
		n.t.Fatalf("serve did not die after SIGKILL")
	}
	lazyUnmount(n.t, n.mount)
}

// stop shuts the node down with SIGTERM and checks the clean exit.
func (n *node) stop() {
	n.t.Helper()
	if code := n.signal(syscall.SIGTERM); code != 0 {
		n.t.Fatalf("serve exited %d after SIGTERM, want 0\n%s", code, n.stderr.String())
	}
	if isMounted(n.mount) {
		n.t.Fatalf("%s is still mounted after a clean shutdown", n.mount)
	}
}

// dirs makes a fresh data dir and an existing, empty mount point.
func dirs(t *testing.T) (dataDir, mount string) {
	t.Helper()
	base := t.TempDir()
	dataDir, mount = filepath.Join(base, "data"), filepath.Join(base, "mnt")
	if err := os.Mkdir(mount, 0o755); err != nil {
		t.Fatal(err)
	}
	return dataDir, mount
}

// serveArgs are the flags of a node in dataDir mounted at mount.
func serveArgs(dataDir, mount string, extra ...string) []string {
	return append([]string{"--data-dir", dataDir, "--mount", mount}, extra...)
}

// mountTmpfs mounts a small tmpfs at dir (read-only if ro) for the test.
func mountTmpfs(t *testing.T, dir string, opts string) {
	t.Helper()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", opts, "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs on %s: %v: %s", dir, err, out)
	}
	t.Cleanup(func() { lazyUnmount(t, dir) })
}

// runTool runs a system tool and returns its combined output.
func runTool(name string, args ...string) ([]byte, error) {
	return exec.Command(name, args...).CombinedOutput()
}
