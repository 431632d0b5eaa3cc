package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/datenlord/datenlord-go/cluster/clustertest"
	"github.com/datenlord/datenlord-go/cluster/lincheck"
)

// linDirs are the directories of the linearizability workload: the model
// partitions by directory, which keeps the check fast.
func linDirs() []string { return []string{"lin0", "lin1", "lin2"} }

// linOpTimeout is how long a client waits for one metadata operation
// before it records it as of unknown outcome.
const linOpTimeout = 3 * time.Second

// TestLinearizableUnderFaults is acceptance 4: clients on all three mounts
// (kernel attribute and entry caches off, so every stat and lookup reaches
// the node) create, rename, unlink, chmod, truncate and stat a few names
// while the leader is killed and restarted and then a partition comes and
// goes; porcupine must find the history linearizable. The same history
// with one stale read injected must be reported as a violation.
func TestLinearizableUnderFaults(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{Netns: true, Args: []string{"--attr-timeout", "0", "--entry-timeout", "0"}})
	for _, d := range linDirs() {
		mkdirOn(t, c.Node(0), d, c.Nodes())
	}
	rec := lincheck.NewRecorder()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	unknown := map[string]int{}
	var clients []*lincheck.Client
	for i, n := range c.Nodes() {
		cl, err := lincheck.NewClient(rec, n.Mountpoint(), linDirs(), linOpTimeout, int64(i+1), n.ID())
		if err != nil {
			t.Fatal(err)
		}
		clients = append(clients, cl)
		wg.Add(1)
		go func() {
			defer wg.Done()
			u := cl.Run(ctx, 10*time.Millisecond)
			mu.Lock()
			unknown[n.ID()] += u
			mu.Unlock()
		}()
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			wg.Wait()
			for _, cl := range clients {
				cl.Close()
			}
		}
	}
	defer stop()

	type phaseSpan struct {
		name       string
		start, end int64 // recorder clock
	}
	var phases []phaseSpan
	phase := func(name string, d time.Duration) {
		begin := int64(time.Since(rec.Start()))
		time.Sleep(d)
		phases = append(phases, phaseSpan{name, begin, int64(time.Since(rec.Start()))})
	}
	phase("steady", 3*time.Second)
	leader := c.WaitLeader(30 * time.Second)
	leader.Kill()
	phase("leader "+leader.ID()+" killed", 4*time.Second)
	leader.Start()
	phase("leader restarted", 3*time.Second)
	cur := c.WaitLeader(30 * time.Second)
	c.Partition([]*clustertest.Node{cur}, c.Others(cur))
	phase("leader "+cur.ID()+" partitioned away", 6*time.Second)
	c.Heal()
	phase("healed", 3*time.Second)
	stop()

	history := rec.History()
	t.Logf("history: %s; client-side unknown outcomes per node: %v", lincheck.Count(history), unknown)
	for _, p := range phases {
		done := map[any]int{}
		for _, op := range history {
			if op.Return >= p.start && op.Return < p.end {
				done[op.Metadata]++
			}
		}
		t.Logf("phase %-32s %6.2fs..%6.2fs: completed ops per node %v", p.name, time.Duration(p.start).Seconds(), time.Duration(p.end).Seconds(), done)
	}
	vizDir := os.TempDir()
	checkStart := time.Now()
	res, err := lincheck.Check(history, 60*time.Second, filepath.Join(vizDir, fmt.Sprintf("datenlord-lin-%d.html", os.Getpid())))
	t.Logf("porcupine: %s in %s", res, time.Since(checkStart).Round(time.Millisecond))
	if res != porcupine.Ok {
		t.Errorf("history is not linearizable: %v", err)
	}

	t.Run("StaleReadIsDetected", func(t *testing.T) {
		broken, how := lincheck.InjectStaleRead(history)
		t.Logf("broken mode: %s", how)
		res, err := lincheck.Check(broken, 60*time.Second, "")
		t.Logf("porcupine on the broken history: %s\n%v", res, err)
		if res != porcupine.Illegal {
			t.Errorf("porcupine says %s on a history with a stale read, want Illegal: the checker cannot fail", res)
		}
	})
}
