package cluster

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/datenlord/datenlord-go/cluster/clustertest"
)

// minorityOpTimeout is how long the test waits for a write on the
// minority side before it calls the write blocked.
const minorityOpTimeout = 4 * time.Second

// minorityWrite is the fate of one write on the minority side.
type minorityWrite struct {
	rel     string
	sha256  string
	began   time.Time
	blocked bool          // no answer within minorityOpTimeout
	err     error         // final error, valid after done
	took    time.Duration // valid after done
	done    chan struct{}
}

// TestMinorityPartition is acceptance 3: the leader is cut off with nobody
// (a minority of one) by nftables in the namespaces. Its writes must fail
// or block with a clear error and never succeed and then vanish; the
// majority elects a new leader and keeps writing; after the partition
// heals every node converges to the same namespace (full tree listings:
// path, type, size, mode, content hash).
func TestMinorityPartition(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Netns: true})
	old := c.WaitLeader(30 * time.Second)
	majority := c.Others(old)
	mkdirOn(t, majority[0], "load", c.Nodes())
	mkdirOn(t, old, "minority", c.Nodes())

	load := newWriteLoad()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, n := range majority {
		wg.Add(1)
		go func() { defer wg.Done(); load.client(ctx, n, "load", n.ID(), 4<<10, 20*time.Millisecond) }()
	}
	defer func() { cancel(); wg.Wait() }()
	time.Sleep(time.Second)

	partitionAt := time.Now()
	c.Partition([]*clustertest.Node{old}, majority)
	newLeader := c.WaitLeader(30*time.Second, majority...)
	elected := time.Since(partitionAt)

	// Writes on the minority side, one after the other.
	var writes []*minorityWrite
	for i := 0; i < 3; i++ {
		w := startMinorityWrite(old, fmt.Sprintf("minority/w%d", i))
		writes = append(writes, w)
		select {
		case <-w.done:
		case <-time.After(minorityOpTimeout):
			w.blocked = true
		}
	}
	// Metadata latency on the majority side while a member is cut off.
	probe := filepath.Join(majority[0].Mountpoint(), "load", "probe")
	probeStart := time.Now()
	probeErr := os.WriteFile(probe, []byte("probe"), 0o644)
	created := time.Since(probeStart)
	if probeErr == nil {
		probeErr = os.Remove(probe)
	}
	t.Logf("during the partition on majority node %s: create+close %s, unlink %s (err %v)",
		majority[0], created.Round(time.Millisecond), (time.Since(probeStart) - created).Round(time.Millisecond), probeErr)
	// The majority must have made progress meanwhile.
	duringStart := partitionAt.Sub(load.start)
	during := load.firstCompletionAfter(duringStart + elected)
	healAt := time.Now()
	c.Heal()
	for _, w := range writes {
		select {
		case <-w.done:
		case <-time.After(30 * time.Second):
			t.Fatalf("minority write %s still hangs 30s after the heal", w.rel)
		}
	}
	cancel()
	wg.Wait()
	if !load.waitPending(30 * time.Second) {
		t.Errorf("majority load operations still hang 30s after the load stopped")
	}

	t.Logf("partition {%s} | %v: majority named new leader %s after %s (as seen by polling cluster status); longest gap between completed majority writes from the partition to the heal %s",
		old, majority, newLeader, elected.Round(time.Millisecond), load.longestGap(duringStart, healAt.Sub(load.start)).Round(time.Millisecond))
	if during < 0 {
		t.Errorf("the majority completed no write after electing a new leader")
	}
	var acked []written
	for _, w := range writes {
		switch {
		case w.err == nil && w.blocked:
			t.Logf("minority write %s: blocked (> %s), then succeeded %s after it began, after the heal", w.rel, minorityOpTimeout, w.took.Round(time.Millisecond))
			acked = append(acked, written{rel: w.rel, sha256: w.sha256, node: old.ID()})
		case w.err == nil:
			// Success within the partition means the minority committed,
			// which a Raft minority cannot do.
			t.Errorf("minority write %s succeeded during the partition (%s): a minority must not commit", w.rel, w.took.Round(time.Millisecond))
			acked = append(acked, written{rel: w.rel, sha256: w.sha256, node: old.ID()})
		case w.blocked:
			t.Logf("minority write %s: blocked (> %s), then failed %s after it began: %v", w.rel, minorityOpTimeout, w.took.Round(time.Millisecond), w.err)
		default:
			t.Logf("minority write %s: failed after %s: %v (%s)", w.rel, w.took.Round(time.Millisecond), w.err, errnoName(w.err))
		}
	}
	listing, took := c.WaitSameTree(60*time.Second, "")
	t.Logf("after the heal all 3 nodes list the same tree (%d entries) %s after the heal (%s including the wait for pending writes)",
		len(listing), took.Round(time.Millisecond), time.Since(healAt).Round(time.Millisecond))
	done, failed := load.results()
	t.Logf("majority load: %d files acknowledged, %d failed (%s)", len(done), len(failed), summarizeFailures(failed))
	checkPresent(t, append(done, acked...), c.Nodes())
}

// startMinorityWrite starts one create + write + fsync + close on node's
// mount in the background.
func startMinorityWrite(node *clustertest.Node, rel string) *minorityWrite {
	data := make([]byte, 4<<10)
	_, _ = rand.Read(data)
	sum := sha256.Sum256(data)
	w := &minorityWrite{rel: rel, sha256: hex.EncodeToString(sum[:]), began: time.Now(), done: make(chan struct{})}
	go func() {
		w.err = writeFsync(filepath.Join(node.Mountpoint(), rel), data)
		w.took = time.Since(w.began)
		close(w.done)
	}()
	return w
}
