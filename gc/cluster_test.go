package gc_test

import (
	"context"
	"errors"
	"os"
	"testing"

	"github.com/datenlord/datenlord-go/fs/fstest"
	"github.com/datenlord/datenlord-go/gc"
	"github.com/datenlord/datenlord-go/meta"
)

// fakeCluster stands for the other nodes of a cluster: whether this node
// leads, and the pins every node reports combined.
type fakeCluster struct {
	*meta.Service
	leader bool
	pins   meta.NodePins
	err    error
}

func (f *fakeCluster) IsLeader() bool { return f.leader }

func (f *fakeCluster) ClusterPins(context.Context) (meta.NodePins, error) { return f.pins, f.err }

// TestClusterCollectorRespectsEveryNode: only the leader collects, another
// node's open file defers the garbage it may read, and a node that cannot
// be asked stops the pass.
func TestClusterCollectorRespectsEveryNode(t *testing.T) {
	h := fstest.Start(t, fstest.WithBlockSize(blockSize), fstest.WithPageSize(16<<10))
	ctx := context.Background()
	if err := os.WriteFile(h.Path("f"), randBytes(t, 2*blockSize), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.Path("f"), randBytes(t, 2*blockSize), 0o644); err != nil {
		t.Fatal(err)
	}
	garbage, err := h.Meta.Garbage(ctx, 0)
	if err != nil || len(garbage) == 0 {
		t.Fatalf("no garbage to collect: %v, %v", garbage, err)
	}
	cl := &fakeCluster{Service: h.Meta}
	c, err := gc.New(gc.Config{Cluster: cl}, h.Meta, h.Store, h.Cache, h.FS)
	if err != nil {
		t.Fatal(err)
	}
	before := storeBlocks(t, h)

	if st, err := c.Collect(ctx); err != nil || st.Deleted != 0 {
		t.Fatalf("a follower collected: %+v, %v", st, err)
	}
	cl.leader = true
	cl.err = errors.New("n3: connection refused")
	if _, err := c.Collect(ctx); err == nil {
		t.Fatal("collected without the pins of an unreachable node")
	}
	cl.err = nil
	cl.pins = meta.NodePins{HasOpen: true, OldestOpen: 1} // a file open elsewhere since index 1
	if st, err := c.Collect(ctx); err != nil || st.Deleted != 0 || st.Deferred == 0 {
		t.Fatalf("garbage another node may read was not deferred: %+v, %v", st, err)
	}
	if got := storeBlocks(t, h); len(got) != len(before) {
		t.Fatalf("store went from %d to %d blocks while pinned", len(before), len(got))
	}
	cl.pins = meta.NodePins{}
	st, err := c.Collect(ctx)
	if err != nil || st.Deleted != len(garbage) {
		t.Fatalf("unpinned pass: %+v, %v (want %d deleted)", st, err, len(garbage))
	}
}
