package cluster

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/datenlord/datenlord-go/bench/tiers"
	"github.com/datenlord/datenlord-go/cluster/clustertest"
)

// TestBenchTiersAddr: `bench tiers --addr` against a running cluster
// reads the pages a node holds over the network (the node counts them as
// served from memory, no store GET) next to a ping-pong with a server the
// node starts, measures only the node's page size, and refuses a wrong
// secret.
func TestBenchTiersAddr(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Nodes: 2, Metrics: true, Args: []string{"--page-size", "64KiB"}})
	n1 := c.Node(0)
	const size = 16 << 20
	writeRandomFile(t, filepath.Join(n1.Mountpoint(), "hot.bin"), size)
	secret := filepath.Join(c.Dir(), "cluster-secret")
	run := func(wantOK bool, args ...string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Getenv(clustertest.BinaryEnv), args...)
		cmd.Env = os.Environ()
		out, err := cmd.CombinedOutput()
		if (err == nil) != wantOK {
			t.Fatalf("%v: err %v (want ok %v)\n%s", args, err, wantOK, out)
		}
		return string(out)
	}
	run(true, "cache", "warmup", "/hot.bin", "--addr", n1.Addr(), "--cluster-secret-file", secret)

	wrong := filepath.Join(t.TempDir(), "wrong-secret")
	if err := os.WriteFile(wrong, []byte("not the cluster secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	out := run(false, "bench", "tiers", "--addr", n1.Addr(), "--cluster-secret-file", wrong, "--only", "neighbor/tcp", "--sizes", "64KiB")
	t.Logf("wrong secret: %s", strings.TrimSpace(out))

	served0 := scrapeSum(t, n1, "datenlord_neighbor_served_total", `source="memory"`)
	gets0 := clusterGets(t, c)
	jsonPath := filepath.Join(t.TempDir(), "tiers.json")
	out = run(true, "bench", "tiers", "--addr", n1.Addr(), "--cluster-secret-file", secret, "--only", "neighbor/tcp",
		"--sizes", "4KiB,64KiB", "--duration", "200ms", "--iterations", "2000", "--parallel", "2", "--json", jsonPath)
	t.Log(out)
	served := scrapeSum(t, n1, "datenlord_neighbor_served_total", `source="memory"`) - served0
	if g := clusterGets(t, c) - gets0; g != 0 {
		t.Errorf("the bench cost %v store GETs; it should read only pages held in memory", g)
	}

	b, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep tiers.Report
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("bench JSON: %v\n%s", err, b)
	}
	row := func(tier string, sz int) tiers.Row {
		r, ok := rep.Find(tier, sz)
		if !ok {
			t.Fatalf("no %s row at %d in the report", tier, sz)
		}
		return r
	}
	for _, name := range []string{tiers.TierNeighborTCP, tiers.BaseTCP} {
		if r := row(name, 4<<10); r.Skipped == "" || !strings.Contains(r.Skipped, "64KiB pages") {
			t.Errorf("%s at 4KiB: skipped %q, want a skip naming the node's 64KiB pages", name, r.Skipped)
		}
		r := row(name, 64<<10)
		if r.Skipped != "" || r.Samples < 10 || r.P50US <= 0 || r.MBps <= 0 {
			t.Errorf("%s at 64KiB: %+v, want a measured row", name, r)
		}
	}
	tier := row(tiers.TierNeighborTCP, 64<<10)
	if tier.Ratio <= 0 {
		t.Errorf("neighbor/tcp at 64KiB: ratio %v, want > 0", tier.Ratio)
	}
	// Every timed read (and the first reads) reached node 1's memory.
	if served < float64(tier.Samples) {
		t.Errorf("node 1 served %v pages from memory; the latency phase alone timed %d reads", served, tier.Samples)
	}
	t.Logf("neighbor/tcp 64KiB p50 %.1fus vs ping-pong %.1fus (%.2fx); node 1 served %v pages", tier.P50US, row(tiers.BaseTCP, 64<<10).P50US, tier.Ratio, served)
}
