package tiers_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/datenlord/datenlord-go/bench/tiers"
	"github.com/datenlord/datenlord-go/bench/tiers/tierstest"
	"github.com/datenlord/datenlord-go/tcpfallback"
)

// client is a client transport holding secret.
func client(t *testing.T, secret []byte) *tcpfallback.Transport {
	t.Helper()
	tr, err := tcpfallback.New(context.Background(), tcpfallback.Config{NodeID: "bench-client", Secret: secret})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

// TestRemoteNeighborRows runs the neighbor/tcp row against a node over
// real sockets: rows at the node's page size are measured next to the
// node's ping-pong server, other sizes are skipped, and the node's
// ping-pong server is gone afterwards.
func TestRemoteNeighborRows(t *testing.T) {
	n := tierstest.StartNode(t, 8192, 4, nil)
	tr := client(t, n.Secret)
	rep, err := tiers.Run(context.Background(), tiers.Config{
		Sizes: []int{4096, 8192}, Duration: 20 * time.Millisecond, Iterations: 200, MinSamples: 50, Parallel: 2,
		Dir: t.TempDir(), NoS3: true, Only: []string{tiers.TierNeighborTCP}, Remote: &tiers.Remote{Addr: n.Addr, Transport: tr},
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.NeighborNode != n.Addr {
		t.Errorf("report's neighbor node %q, want %q", rep.NeighborNode, n.Addr)
	}
	for _, name := range []string{tiers.TierNeighborTCP, tiers.BaseTCP} {
		if r, _ := rep.Find(name, 4096); !strings.Contains(r.Skipped, "8KiB pages") {
			t.Errorf("%s at 4KiB: %+v, want skipped for the node's 8KiB pages", name, r)
		}
		if r, _ := rep.Find(name, 8192); r.Skipped != "" || r.Samples < 50 || r.P50US <= 0 || r.MBps <= 0 {
			t.Errorf("%s at 8KiB: %+v, want measured", name, r)
		}
	}
	if r, _ := rep.Find(tiers.TierNeighborTCP, 8192); r.Ratio <= 0 {
		t.Errorf("no ratio: %+v", r)
	}
	// The bench stopped the node's ping-pong server: as many can start
	// again as the node allows at once.
	for i := range 4 {
		req, _ := json.Marshal(map[string]int{"max_size": 4096, "life_s": 1})
		if _, err := tr.Call(context.Background(), n.Addr, tiers.OpPingPong, req); err != nil {
			t.Fatalf("ping-pong start %d after the bench: %v", i, err)
		}
	}
}

// TestRemoteErrors: a node holding too few pages, a wrong secret and bad
// op requests get clear errors.
func TestRemoteErrors(t *testing.T) {
	empty := tierstest.StartNode(t, 4096, 0, nil)
	cfg := func(addr string, tr *tcpfallback.Transport) tiers.Config {
		return tiers.Config{Sizes: []int{4096}, Duration: 10 * time.Millisecond, Iterations: 20, Dir: t.TempDir(), NoS3: true,
			Only: []string{tiers.TierNeighborTCP}, Remote: &tiers.Remote{Addr: addr, Transport: tr}}
	}
	_, err := tiers.Run(context.Background(), cfg(empty.Addr, client(t, empty.Secret)))
	if err == nil || !strings.Contains(err.Error(), "cache warmup") {
		t.Errorf("node without pages: err %v, want one that says to warm up", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c := cfg(empty.Addr, client(t, []byte("wrong secret")))
	if _, err := tiers.Run(ctx, c); err == nil || !strings.Contains(err.Error(), "authent") {
		t.Errorf("wrong secret: err %v, want an authentication error", err)
	}

	tr := client(t, empty.Secret)
	for _, tc := range []struct {
		name string
		op   uint16
		req  string
		want string
	}{
		{"sample: not JSON", tiers.OpSample, "{", "sample request"},
		{"ping-pong: not JSON", tiers.OpPingPong, "[]", "ping-pong request"},
		{"ping-pong: no size", tiers.OpPingPong, `{}`, "size 0"},
		{"ping-pong: oversized", tiers.OpPingPong, `{"max_size": 1073741824}`, "want 1.."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tr.Call(ctx, empty.Addr, tc.op, []byte(tc.req))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want one containing %q", err, tc.want)
			}
		})
	}
	req := []byte(`{"max_size": 4096, "life_s": 60}`)
	for i := range 4 {
		if _, err := tr.Call(ctx, empty.Addr, tiers.OpPingPong, req); err != nil {
			t.Fatalf("ping-pong start %d: %v", i, err)
		}
	}
	if _, err := tr.Call(ctx, empty.Addr, tiers.OpPingPong, req); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Fatalf("fifth ping-pong server: err %v, want a refusal", err)
	}
}
