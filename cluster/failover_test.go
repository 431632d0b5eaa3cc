package cluster

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/datenlord/datenlord-go/cluster/clustertest"
)

// failoverBound is the longest pause acceptance 2 allows.
const failoverBound = 5 * time.Second

// TestLeaderKillFailover is acceptance 2: kill -9 of the leader while
// clients on the other mounts create files and write+fsync them.
// Operations pause and resume within 5 s, every operation that returned
// success is present afterwards on every mount, and the killed node
// restarts and catches up.
func TestLeaderKillFailover(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{})
	leader := c.WaitLeader(30 * time.Second)
	others := c.Others(leader)
	mkdirOn(t, others[0], "load", c.Nodes())

	load := newWriteLoad()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i, n := range others {
		for j := 0; j < 2; j++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				load.client(ctx, n, "load", fmt.Sprintf("%s-c%d", n.ID(), i*2+j), 8<<10, 0)
			}()
		}
	}
	defer func() { cancel(); wg.Wait() }()

	time.Sleep(2 * time.Second)
	killAt := load.since()
	leader.Kill()
	t.Logf("killed leader %s (SIGKILL) at %s", leader, killAt.Round(time.Millisecond))
	newLeader := c.WaitLeader(30*time.Second, others...)
	electedAt := load.since()
	// Keep the load running until operations have resumed for a while.
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if first := load.firstCompletionAfter(killAt); first > 0 && load.since()-first > 3*time.Second {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	stopAt := load.since()
	cancel()
	wg.Wait()
	if !load.waitPending(30 * time.Second) {
		t.Errorf("load operations still hang 30s after the load stopped")
	}

	firstAfter := load.firstCompletionAfter(killAt)
	gap := load.longestGap(0, stopAt)
	done, failed := load.results()
	t.Logf("failover: new leader %s named by both survivors %s after the kill; first op completed %s after the kill; longest gap between completions %s; longest single op %s",
		newLeader, (electedAt - killAt).Round(time.Millisecond), (firstAfter - killAt).Round(time.Millisecond), gap.Round(time.Millisecond), load.maxLatency.Round(time.Millisecond))
	t.Logf("load: %d files acknowledged, %d ops failed (%s)", len(done), len(failed), summarizeFailures(failed))
	if firstAfter < 0 {
		t.Fatalf("no operation completed after the leader was killed")
	}
	if gap > failoverBound {
		t.Errorf("operations paused for %s, want at most %s", gap, failoverBound)
	}

	restartAt := time.Now()
	leader.Start()
	listing, _ := c.WaitSameTree(60*time.Second, "")
	t.Logf("killed node %s restarted and shows the same tree as the others (%d entries) %s after its restart", leader, len(listing), time.Since(restartAt).Round(time.Millisecond))
	checkPresent(t, done, c.Nodes())
}
