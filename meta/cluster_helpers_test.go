package meta

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/datenlord/datenlord-go/tcpfallback"
)

// testNode is one node of an in-process test cluster: a metadata service
// over its own transport on a loopback port.
type testNode struct {
	id   string
	dir  string
	addr string
	tr   testTransport
	svc  *Service

	mu      sync.Mutex
	changes []Change // changes made by other nodes, as OnChange reported
}

// testTransport is a Transport that can be closed (a node's process ends).
type testTransport interface {
	Transport
	Close() error
}

// testCluster is a set of nodes that share one Peers list.
type testCluster struct {
	t     testing.TB
	nodes []*testNode
	peers map[string]string
	// snapshotThreshold and trailingLogs tune snapshotting (0: defaults).
	snapshotThreshold, trailingLogs uint64
}

const testElection = 300 * time.Millisecond

// newTestCluster starts n voters and waits until all serve.
func newTestCluster(t testing.TB, n int) *testCluster {
	t.Helper()
	return newTestClusterTuned(t, n, 0, 0)
}

// newTestClusterTuned is newTestCluster with snapshot tuning (0:
// defaults): a snapshot every threshold entries, keeping trailing ones.
func newTestClusterTuned(t testing.TB, n int, threshold, trailing uint64) *testCluster {
	t.Helper()
	c := &testCluster{t: t, peers: map[string]string{}, snapshotThreshold: threshold, trailingLogs: trailing}
	base := t.TempDir()
	for i := range n {
		id := fmt.Sprintf("n%d", i+1)
		nd := &testNode{id: id, dir: filepath.Join(base, id), addr: freeAddr(t)}
		c.nodes = append(c.nodes, nd)
		c.peers[id] = nd.addr
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, nd := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.start(nd, Config{Peers: c.peers})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, nd := range c.nodes {
			c.stop(nd, false)
		}
	})
	return c
}

// start opens nd's transport and service with the membership fields of
// cfg (Peers or Join, Voter).
func (c *testCluster) start(nd *testNode, cfg Config) error {
	tr, err := newTestTransport(nd.id, nd.addr)
	if err != nil {
		return fmt.Errorf("transport of %s: %w", nd.id, err)
	}
	cfg.Dir, cfg.NodeID, cfg.Transport = nd.dir, nd.id, tr
	cfg.ElectionTimeout = testElection
	cfg.BlockSize = 4096
	cfg.RetryTimeout = 15 * time.Second
	cfg.SnapshotThreshold, cfg.TrailingLogs = c.snapshotThreshold, c.trailingLogs
	cfg.SnapshotInterval = 200 * time.Millisecond
	cfg.Logger = slog.New(slog.DiscardHandler)
	if os.Getenv("META_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("node", nd.id)
	}
	cfg.OnChange = func(origin string, ch []Change) {
		if origin == nd.id {
			return
		}
		nd.mu.Lock()
		nd.changes = append(nd.changes, ch...)
		nd.mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	svc, err := Open(ctx, cfg)
	if err != nil {
		_ = tr.Close()
		return fmt.Errorf("open %s: %w", nd.id, err)
	}
	nd.tr, nd.svc = tr, svc
	return nil
}

// stop closes nd's service (handing over leadership if graceful) and its
// transport. Without graceful it is as abrupt as the in-process API
// allows: no leadership transfer, the transport dies at once.
func (c *testCluster) stop(nd *testNode, graceful bool) {
	if nd.svc == nil {
		return
	}
	if !graceful {
		_ = nd.tr.Close()
	}
	_ = nd.svc.close(graceful)
	_ = nd.tr.Close()
	nd.svc, nd.tr = nil, nil
}

// leader waits until the running nodes agree on a leader and returns it.
func (c *testCluster) leader() *testNode {
	c.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		for _, nd := range c.nodes {
			if nd.svc != nil && nd.svc.IsLeader() {
				return nd
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.t.Fatal("no leader within 10s")
	return nil
}

// followers returns the running nodes that do not lead.
func (c *testCluster) followers() []*testNode {
	var out []*testNode
	for _, nd := range c.nodes {
		if nd.svc != nil && !nd.svc.IsLeader() {
			out = append(out, nd)
		}
	}
	return out
}

func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

var _ Transport = (*tcpfallback.Transport)(nil)

// testSecret is the cluster secret of test clusters.
var testSecret = []byte("meta-test-cluster-secret")

// newTestTransport starts the real node transport on addr.
func newTestTransport(id, addr string) (testTransport, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return tcpfallback.New(ctx, tcpfallback.Config{
		NodeID: id, Listen: addr, Secret: testSecret,
		Logger: slog.New(slog.DiscardHandler),
	})
}
