package clustertest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Options configure a [Cluster]. The zero value is a 3-voter cluster on
// 127.0.0.1 ports.
type Options struct {
	// Nodes is the number of nodes, all bootstrap voters in --peers
	// (default 3).
	Nodes int
	// Standalone starts one node without --peers, --node-id, --listen and
	// --cluster-secret-file: the single-node file system, for comparisons.
	Standalone bool
	// Netns runs every node in its own network namespace behind a bridge,
	// which makes [Cluster.Partition] possible. Without it the nodes listen
	// on 127.0.0.1.
	Netns bool
	// Metrics gives each node a --metrics address (in namespace mode it is
	// reachable only inside the node's namespace).
	Metrics bool
	// KV gives each node a --kv-listen address (see [Node.KVAddr]; in
	// namespace mode it is reachable only inside the node's namespace).
	KV bool
	// Args are extra serve flags for every node, such as
	// "--attr-timeout", "0".
	Args []string
	// Binary is the datenlord-node binary (default: $DATENLORD_NODE_BINARY,
	// which [Main] sets).
	Binary string
	// ReadyTimeout bounds how long a node may take to mount, and a cluster
	// to agree on a leader (default 60s).
	ReadyTimeout time.Duration
	// ExitTimeout bounds a graceful shutdown after SIGTERM (default 60s).
	ExitTimeout time.Duration
}

// Cluster is a set of running nodes that share one store directory and
// one cluster secret.
type Cluster struct {
	t          testing.TB
	opts       Options
	binary     string
	dir        string // everything of the cluster: store, secret, nodes, logs
	storeDir   string
	secretFile string
	peers      string // the --peers value
	nodes      []*Node
	net        *network // nil on loopback
	clusterCLI clusterCLI
}

// clusterCLI is what `datenlord-node cluster status --help` offers.
type clusterCLI struct {
	secretFlag bool // cluster status takes --cluster-secret-file
}

// nodeListenPort is the RPC port of every node in namespace mode: each
// node has its own namespace, so they can all use the same one.
const nodeListenPort = 7410

// metricsPort is the --metrics port of every node in namespace mode.
const metricsPort = 9410

// kvPort is the --kv-listen port of every node in namespace mode.
const kvPort = 2379

// New starts a cluster, waits until every node is mounted and (unless
// Standalone) all nodes agree on a leader, and registers the teardown with
// t.Cleanup. It fails the test on any error; it skips when the test cannot
// mount (not root, no /dev/fuse).
func New(t testing.TB, opts Options) *Cluster {
	t.Helper()
	RequireFUSE(t)
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Standalone {
		opts.Nodes = 1
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 60 * time.Second
	}
	if opts.ExitTimeout == 0 {
		opts.ExitTimeout = 60 * time.Second
	}
	c := &Cluster{t: t, opts: opts, binary: opts.Binary}
	if c.binary == "" {
		c.binary = os.Getenv(BinaryEnv)
	}
	if c.binary == "" {
		t.Fatalf("clustertest: no datenlord-node binary: call clustertest.Main(m) from TestMain or set %s", BinaryEnv)
	}
	sweepStale(t)
	if !opts.Standalone {
		c.requireClusterFlags()
	}

	dir, err := os.MkdirTemp("", fmt.Sprintf("dlcluster-%d-", os.Getpid()))
	if err != nil {
		t.Fatalf("clustertest: %v", err)
	}
	c.dir = dir
	t.Cleanup(c.teardown)

	c.storeDir = filepath.Join(dir, "store")
	c.secretFile = filepath.Join(dir, "cluster-secret")
	secret := make([]byte, 32)
	if _, err := rand.Read(secret); err != nil {
		t.Fatalf("clustertest: secret: %v", err)
	}
	if err := os.MkdirAll(c.storeDir, 0o755); err != nil {
		t.Fatalf("clustertest: %v", err)
	}
	if err := os.WriteFile(c.secretFile, []byte(hex.EncodeToString(secret)+"\n"), 0o600); err != nil {
		t.Fatalf("clustertest: secret file: %v", err)
	}

	if opts.Netns {
		c.net, err = newNetwork(opts.Nodes)
		if err != nil {
			t.Fatalf("clustertest: network namespaces: %v", err)
		}
	}
	var peers []string
	for i := 0; i < opts.Nodes; i++ {
		id := fmt.Sprintf("n%d", i+1)
		n := &Node{c: c, id: id,
			dataDir: filepath.Join(dir, id, "data"),
			mount:   filepath.Join(dir, id, "mnt"),
			logPath: filepath.Join(dir, id+".log"),
		}
		if err := os.MkdirAll(n.mount, 0o755); err != nil {
			t.Fatalf("clustertest: %v", err)
		}
		if c.net != nil {
			n.netns = c.net.nodeNS[i]
			n.addr = net.JoinHostPort(c.net.addrs[i], fmt.Sprint(nodeListenPort))
			if opts.Metrics {
				n.metrics = net.JoinHostPort(c.net.addrs[i], fmt.Sprint(metricsPort))
			}
			if opts.KV {
				n.kv = net.JoinHostPort(c.net.addrs[i], fmt.Sprint(kvPort))
			}
		} else {
			n.addr = freeLoopbackAddr(t)
			if opts.Metrics {
				n.metrics = freeLoopbackAddr(t)
			}
			if opts.KV {
				n.kv = freeLoopbackAddr(t)
			}
		}
		peers = append(peers, id+"="+n.addr)
		c.nodes = append(c.nodes, n)
	}
	c.peers = strings.Join(peers, ",")

	for _, n := range c.nodes {
		if err := n.start(); err != nil {
			t.Fatalf("clustertest: %v", err)
		}
	}
	for _, n := range c.nodes {
		if err := n.waitMounted(opts.ReadyTimeout); err != nil {
			t.Fatalf("clustertest: %v\n%s", err, n.logTail(60))
		}
	}
	if !opts.Standalone {
		c.WaitLeader(opts.ReadyTimeout)
	}
	return c
}

// RequireFUSE skips the test unless it can mount: root and /dev/fuse.
func RequireFUSE(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("clustertest: mounting needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("clustertest: no /dev/fuse (run make deps)")
	}
}

// requireClusterFlags fails the test with a clear message when the binary
// does not have the cluster flags yet, and learns what cluster status
// takes.
func (c *Cluster) requireClusterFlags() {
	c.t.Helper()
	out, _ := exec.Command(c.binary, "serve", "--help").CombinedOutput()
	for _, flag := range []string{"--peers", "--node-id", "--listen", "--cluster-secret-file"} {
		if !strings.Contains(string(out), flag) {
			c.t.Fatalf("clustertest: %s serve has no %s flag: the multi-node side of issue 4 (meta cluster) is not in this build", c.binary, flag)
		}
	}
	out, err := exec.Command(c.binary, "cluster", "status", "--help").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--addr") {
		c.t.Fatalf("clustertest: %s cluster status --help: %v: no --addr flag: the cluster command of issue 4 is not in this build\n%s", c.binary, err, out)
	}
	c.clusterCLI.secretFlag = strings.Contains(string(out), "--cluster-secret-file")
}

// Nodes returns the cluster's nodes in --peers order (n1, n2, ...).
func (c *Cluster) Nodes() []*Node { return append([]*Node(nil), c.nodes...) }

// Node returns the node with index i (0-based; its id is n<i+1>).
func (c *Cluster) Node(i int) *Node { return c.nodes[i] }

// NodeByID returns the node with the id, or nil.
func (c *Cluster) NodeByID(id string) *Node {
	for _, n := range c.nodes {
		if n.id == id {
			return n
		}
	}
	return nil
}

// Others returns the nodes other than the given ones.
func (c *Cluster) Others(except ...*Node) []*Node {
	var out []*Node
next:
	for _, n := range c.nodes {
		for _, e := range except {
			if n == e {
				continue next
			}
		}
		out = append(out, n)
	}
	return out
}

// Dir is the cluster's directory: store, secret, data dirs, logs.
func (c *Cluster) Dir() string { return c.dir }

// StoreDir is the shared --store directory.
func (c *Cluster) StoreDir() string { return c.storeDir }

// SecretFile is the --cluster-secret-file every node gets.
func (c *Cluster) SecretFile() string { return c.secretFile }

// Binary is the datenlord-node binary the nodes run.
func (c *Cluster) Binary() string { return c.binary }

// Command returns a command that runs the binary with args where node n
// runs it: in n's network namespace (so that n.Addr() is reachable), with
// the DATENLORD_* environment of the test process removed. Use it for the
// CLI, e.g. c.Command(ctx, n, "cluster", "status", "--addr", n.Addr(),
// "--cluster-secret-file", c.SecretFile()).
func (c *Cluster) Command(ctx context.Context, n *Node, args ...string) *exec.Cmd {
	cmd := n.command(ctx, args...)
	cmd.Env = cleanEnv()
	return cmd
}

// teardown kills every node, unmounts, removes the namespaces and the
// directory, and dumps the logs if the test failed.
func (c *Cluster) teardown() {
	var errs []string
	for _, n := range c.nodes {
		if err := n.kill(); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if c.t.Failed() {
		for _, n := range c.nodes {
			c.t.Logf("=== clustertest: log of %s (%s), last 150 lines:\n%s", n.id, n.logPath, n.logTail(150))
		}
	}
	if c.net != nil {
		if err := c.net.remove(); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if os.Getenv("DATENLORD_CLUSTER_KEEP") == "1" {
		c.t.Logf("clustertest: kept %s (DATENLORD_CLUSTER_KEEP=1)", c.dir)
	} else if len(errs) == 0 {
		if err := os.RemoveAll(c.dir); err != nil {
			errs = append(errs, fmt.Sprintf("remove %s: %v", c.dir, err))
		}
	}
	if len(errs) > 0 {
		c.t.Errorf("clustertest teardown: %s", strings.Join(errs, "; "))
	}
}

// freeLoopbackAddr returns a 127.0.0.1 address with a port that was free
// a moment ago. Ports come from below the kernel's ephemeral range
// (/proc/sys/net/ipv4/ip_local_port_range, 32768 and up by default), so
// that the outgoing connections of nodes and tests, which take ephemeral
// ports, cannot grab a port between this check and the node's bind (seen
// in CI as "address already in use" on a restarted node's port).
func freeLoopbackAddr(t testing.TB) string {
	t.Helper()
	lo, _ := ephemeralRange()
	const base = 10000
	if lo <= base+1000 {
		lo = 32768 // an unusual range: fall back to the default split
	}
	for range 200 {
		port := base + mrand.IntN(lo-base)
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		addr := ln.Addr().String()
		ln.Close()
		return addr
	}
	t.Fatalf("clustertest: no free port below %d on 127.0.0.1", lo)
	return ""
}

// ephemeralRange reads the kernel's local port range (32768 60999 by
// default).
func ephemeralRange() (lo, hi int) {
	lo, hi = 32768, 60999
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return lo, hi
	}
	f := strings.Fields(string(b))
	if len(f) == 2 {
		if a, err := strconv.Atoi(f[0]); err == nil {
			lo = a
		}
		if b, err := strconv.Atoi(f[1]); err == nil {
			hi = b
		}
	}
	return lo, hi
}

// cleanEnv is this process's environment without DATENLORD_* variables, so
// that a developer's settings do not leak into the nodes.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DATENLORD_") {
			env = append(env, kv)
		}
	}
	return env
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = append([]string{fmt.Sprintf("... (%d lines before)", len(lines)-n)}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}

// withTimeout is a context for one CLI call.
func withTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
