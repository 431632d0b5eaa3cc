package cluster

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/datenlord/datenlord-go/cluster/clustertest"
)

// TestRollingRestart is acceptance 5: each of the three nodes in turn is
// shut down gracefully (SIGTERM: flush, unmount, leadership transfer) and
// started again, under a steady load of create + write + fsync + close on
// the other two mounts. No operation may fail (a brief pause is all that
// is allowed), and nothing is lost.
func TestRollingRestart(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{})
	mkdirOn(t, c.Node(0), "load", c.Nodes())
	load := newWriteLoad()
	for i, n := range c.Nodes() {
		leaderBefore := c.WaitLeader(30 * time.Second)
		others := c.Others(n)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		for _, o := range others {
			wg.Add(1)
			go func() {
				defer wg.Done()
				load.client(ctx, o, "load", fmt.Sprintf("r%d-%s", i, o.ID()), 8<<10, 10*time.Millisecond)
			}()
		}
		time.Sleep(time.Second)
		phaseStart := load.since()
		stopBegan := time.Now()
		n.Stop()
		stopTook := time.Since(stopBegan)
		time.Sleep(time.Second)
		startBegan := time.Now()
		n.Start()
		mounted := time.Since(startBegan)
		leaderAfter := c.WaitLeader(30 * time.Second)
		time.Sleep(time.Second)
		phaseEnd := load.since()
		cancel()
		wg.Wait()
		t.Logf("restart %s (leader before %s, after %s): SIGTERM to exit %s, start to mounted %s, longest gap between completed ops on %v %s",
			n, leaderBefore, leaderAfter, stopTook.Round(time.Millisecond), mounted.Round(time.Millisecond), others,
			load.longestGap(phaseStart, phaseEnd).Round(time.Millisecond))
	}
	if !load.waitPending(30 * time.Second) {
		t.Errorf("load operations still hang 30s after the load stopped")
	}
	done, failed := load.results()
	t.Logf("rolling restart: %d files acknowledged, %d ops failed, longest single op %s", len(done), len(failed), load.maxLatency.Round(time.Millisecond))
	for i, f := range failed {
		if i == 10 {
			t.Errorf("... and %d more failures", len(failed)-10)
			break
		}
		t.Errorf("op failed during the rolling restart: %s on %s at %s: %v", f.rel, f.node, f.at.Round(time.Millisecond), f.err)
	}
	listing, took := c.WaitSameTree(60*time.Second, "")
	t.Logf("all 3 nodes list the same tree (%d entries) after %s", len(listing), took.Round(time.Millisecond))
	checkPresent(t, done, c.Nodes())
}
