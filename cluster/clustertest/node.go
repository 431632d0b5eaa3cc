package clustertest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Node is one datenlord-node process of a [Cluster]: its identity, data
// dir and mount point stay the same across restarts. The methods that
// change its state (Start, Stop, Kill) fail the test on error and must not
// be called concurrently for the same node.
type Node struct {
	c       *Cluster
	id      string
	addr    string // node RPC address, host:port
	metrics string // /metrics address, or ""
	kv      string // --kv-listen address, or ""
	netns   string // network namespace name, or "" on loopback
	dataDir string
	mount   string
	logPath string

	mu   sync.Mutex
	proc *process // the running process, or nil
}

// process is one run of the node binary.
type process struct {
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{} // closed when the process has exited
	err  error         // the Wait error, valid after done
}

// ID is the node's --node-id.
func (n *Node) ID() string { return n.id }

// Addr is the node's --listen address (host:port). In namespace mode it
// is reachable only from inside the cluster's namespaces.
func (n *Node) Addr() string { return n.addr }

// MetricsAddr is the node's --metrics address, or "" without
// [Options.Metrics].
func (n *Node) MetricsAddr() string { return n.metrics }

// KVAddr is the node's --kv-listen address, or "" without [Options.KV].
func (n *Node) KVAddr() string { return n.kv }

// Mountpoint is the directory the node mounts the file system on.
func (n *Node) Mountpoint() string { return n.mount }

// DataDir is the node's --data-dir.
func (n *Node) DataDir() string { return n.dataDir }

// Netns is the name of the node's network namespace, or "" on loopback.
func (n *Node) Netns() string { return n.netns }

// LogPath is the file that collects the node's stdout and stderr across
// all its runs.
func (n *Node) LogPath() string { return n.logPath }

// String is the node's id, for messages.
func (n *Node) String() string { return n.id }

// Running reports whether the node's process is running.
func (n *Node) Running() bool {
	n.mu.Lock()
	p := n.proc
	n.mu.Unlock()
	if p == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// serveArgs are the node's serve flags.
func (n *Node) serveArgs() []string {
	args := []string{"serve",
		"--node-id", n.id,
		"--listen", n.addr,
		"--cluster-secret-file", n.c.secretFile,
		"--data-dir", n.dataDir,
		"--mount", n.mount,
		"--store", "file://" + n.c.storeDir,
	}
	if n.c.opts.Standalone {
		args = []string{"serve", "--data-dir", n.dataDir, "--mount", n.mount, "--store", "file://" + n.c.storeDir}
	} else {
		args = append(args, "--peers", n.c.peers)
	}
	if n.metrics != "" {
		args = append(args, "--metrics", n.metrics)
	}
	if n.kv != "" {
		args = append(args, "--kv-listen", n.kv)
	}
	return append(args, n.c.opts.Args...)
}

// command returns the command line that runs the binary with args in the
// node's network namespace (or on the host without one).
func (n *Node) command(ctx context.Context, args ...string) *exec.Cmd {
	if n.netns == "" {
		return exec.CommandContext(ctx, n.c.binary, args...)
	}
	// nsenter --net only joins the network namespace: the FUSE mount is
	// made in the test's mount namespace, where the test sees it.
	full := append([]string{"--net=" + netnsPath(n.netns), "--", n.c.binary}, args...)
	return exec.CommandContext(ctx, "nsenter", full...)
}

// Start starts the node (again) on its data dir and waits until it is
// mounted. It fails the test if the node runs already, exits, or does not
// mount within [Options.ReadyTimeout].
func (n *Node) Start() {
	n.c.t.Helper()
	if err := n.start(); err != nil {
		n.c.t.Fatalf("start %s: %v", n.id, err)
	}
	if err := n.waitMounted(n.c.opts.ReadyTimeout); err != nil {
		n.c.t.Fatalf("start %s: %v\n%s", n.id, err, n.logTail(60))
	}
}

// start starts the process without waiting for the mount.
func (n *Node) start() error {
	if n.Running() {
		return fmt.Errorf("node %s is running already", n.id)
	}
	if IsMounted(n.mount) {
		// A dead mount of an earlier run: serve would refuse it.
		if err := LazyUnmount(n.mount, 10*time.Second); err != nil {
			return err
		}
	}
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	fmt.Fprintf(logf, "=== clustertest: %s starting %s at %s\n", n.id, n.c.binary, time.Now().Format(time.RFC3339Nano))
	cmd := n.command(context.Background(), n.serveArgs()...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = cleanEnv()
	// The node dies with the test process even if no cleanup runs.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start %v: %w", cmd.Args, err)
	}
	p := &process{cmd: cmd, log: logf, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		fmt.Fprintf(logf, "=== clustertest: %s exited at %s: %v\n", n.id, time.Now().Format(time.RFC3339Nano), p.err)
		logf.Close()
		close(p.done)
	}()
	n.mu.Lock()
	n.proc = p
	n.mu.Unlock()
	return nil
}

// waitMounted waits until the node serves its mount.
func (n *Node) waitMounted(timeout time.Duration) error {
	n.mu.Lock()
	p := n.proc
	n.mu.Unlock()
	if p == nil {
		return fmt.Errorf("node %s is not running", n.id)
	}
	deadline := time.Now().Add(timeout)
	for !IsServing(n.mount) {
		select {
		case <-p.done:
			return fmt.Errorf("node %s exited before mounting %s: %v", n.id, n.mount, p.err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s: %s not mounted after %s", n.id, n.mount, timeout)
		}
		time.Sleep(25 * time.Millisecond)
	}
	return nil
}

// Kill crashes the node: SIGKILL, wait for the process to die, and lazily
// unmount the dead FUSE mount it leaves behind.
func (n *Node) Kill() {
	n.c.t.Helper()
	if err := n.kill(); err != nil {
		n.c.t.Fatalf("kill %s: %v", n.id, err)
	}
}

// kill is Kill without failing the test.
func (n *Node) kill() error {
	n.mu.Lock()
	p := n.proc
	n.proc = nil
	n.mu.Unlock()
	if p != nil {
		_ = p.cmd.Process.Kill()
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			return fmt.Errorf("node %s did not die after SIGKILL; its threads' kernel stacks:\n%s", n.id, kernelStacks(p.cmd.Process.Pid))
		}
	}
	return LazyUnmount(n.mount, 10*time.Second)
}

// Stop shuts the node down gracefully: SIGTERM, then it must exit 0
// within [Options.ExitTimeout] and leave its mount point unmounted.
func (n *Node) Stop() {
	n.c.t.Helper()
	if err := n.stop(); err != nil {
		n.c.t.Fatalf("stop %s: %v\n%s", n.id, err, n.logTail(60))
	}
}

// stop is Stop without failing the test.
func (n *Node) stop() error {
	n.mu.Lock()
	p := n.proc
	n.mu.Unlock()
	if p == nil {
		return fmt.Errorf("node %s is not running", n.id)
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("SIGTERM: %w", err)
	}
	select {
	case <-p.done:
	case <-time.After(n.c.opts.ExitTimeout):
		return fmt.Errorf("node %s did not exit within %s of SIGTERM", n.id, n.c.opts.ExitTimeout)
	}
	n.mu.Lock()
	n.proc = nil
	n.mu.Unlock()
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return fmt.Errorf("node %s exited %d after SIGTERM, want 0", n.id, ee.ExitCode())
	}
	if p.err != nil {
		return fmt.Errorf("node %s: %w", n.id, p.err)
	}
	if IsMounted(n.mount) {
		return fmt.Errorf("node %s: %s is still mounted after a clean shutdown", n.id, n.mount)
	}
	return nil
}

// logTail returns the last lines of the node's log.
func (n *Node) logTail(lines int) string {
	b, err := os.ReadFile(n.logPath)
	if err != nil {
		return fmt.Sprintf("(log %s: %v)", n.logPath, err)
	}
	return tail(string(b), lines)
}

// kernelStacks returns the kernel stack of every thread of process pid
// (/proc/PID/task/TID/stack, root only): where a process that SIGKILL
// does not end is stuck.
func kernelStacks(pid int) string {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, t := range tasks {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/comm", pid, t.Name()))
		stack, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stack", pid, t.Name()))
		if err != nil {
			stack = []byte(err.Error() + "\n")
		}
		fmt.Fprintf(&b, "task %s (%s):\n%s", t.Name(), strings.TrimSpace(string(comm)), stack)
	}
	return b.String()
}
