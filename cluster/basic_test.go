package cluster

import (
	"bytes"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/datenlord/datenlord-go/cluster/clustertest"
)

// TestThreeNodesShareOneNamespace is acceptance 1: three serve processes
// on 127.0.0.1 ports with one --peers list elect a leader, each has its
// own mount, and a file written and closed on mount 1 reads byte-identical
// on mounts 2 and 3.
func TestThreeNodesShareOneNamespace(t *testing.T) {
	start := time.Now()
	c := clustertest.New(t, clustertest.Options{})
	leader, err := c.Leader()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("3 nodes mounted and agree on leader %s after %s", leader, time.Since(start).Round(time.Millisecond))
	for _, n := range c.Nodes() {
		st, err := c.Status(n)
		if err != nil {
			t.Fatal(err)
		}
		voters := 0
		for _, m := range st.Members {
			if m.Role == "voter" {
				voters++
			}
		}
		if len(st.Members) != 3 || voters != 3 {
			t.Errorf("cluster status via %s: %d members, %d voters, want 3 voters:\n%s", n, len(st.Members), voters, st.Raw)
		}
	}

	data := make([]byte, 3<<20+12345) // several blocks and a partial one
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	n1 := c.Node(0)
	if err := os.WriteFile(filepath.Join(n1.Mountpoint(), "hello.bin"), data, 0o644); err != nil {
		t.Fatalf("write on %s: %v", n1, err)
	}
	closed := time.Now()
	for _, n := range c.Nodes()[1:] {
		got, err := os.ReadFile(filepath.Join(n.Mountpoint(), "hello.bin"))
		if err != nil {
			t.Fatalf("read on %s right after close on %s: %v", n, n1, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("%s reads %d bytes that differ from the %d written on %s", n, len(got), len(data), n1)
		}
	}
	t.Logf("%d bytes written and closed on %s read byte-identical on n2 and n3 (both reads done %s after close)",
		len(data), n1, time.Since(closed).Round(time.Millisecond))
}
