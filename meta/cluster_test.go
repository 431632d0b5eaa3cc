package meta

import (
	"context"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestClusterWritesAndReadsFromAnyNode(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := context.Background()
	leader := c.leader()
	st, err := leader.svc.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Members) != 3 || st.LeaderID != leader.id {
		t.Fatalf("status: %+v", st)
	}
	for _, m := range st.Members {
		if m.Suffrage != "voter" || m.Error != "" || m.Applied == 0 {
			t.Fatalf("member %+v", m)
		}
	}
	// A write through each node is seen at once by a read on every other
	// node (linearizable reads), and a create is reported to the others.
	for i, w := range c.nodes {
		name := fmt.Sprintf("from-%s", w.id)
		a := mk(t, w.svc, RootIno, name, modeFile)
		for _, r := range c.nodes {
			got, err := r.svc.Lookup(ctx, RootIno, name)
			if err != nil || got.Ino != a.Ino {
				t.Fatalf("write %d on %s, lookup on %s: %+v, %v", i, w.id, r.id, got, err)
			}
		}
		_, err := w.svc.Create(ctx, CreateRequest{Parent: RootIno, Name: name, Mode: modeFile})
		wantErrno(t, "create existing via "+w.id, err, syscall.EEXIST)
	}
	f := c.followers()[0]
	deadline := time.Now().Add(2 * time.Second)
	for {
		f.mu.Lock()
		var sawOther bool
		for _, ch := range f.changes {
			if ch.Kind == ChangeEntry && ch.Parent == RootIno && ch.Name == "from-"+leader.id {
				sawOther = true
			}
			if ch.Kind == ChangeEntry && ch.Name == "from-"+f.id {
				t.Errorf("%s was told about its own change %+v", f.id, ch)
			}
		}
		f.mu.Unlock()
		if sawOther {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s saw no change of %s", f.id, leader.id)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestClusterRetriedCommandAppliesOnce(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := context.Background()
	f := c.followers()[0]
	cmd := &command{Op: opCreate, Create: &CreateRequest{Parent: RootIno, Name: "once", Mode: modeFile, Now: 1},
		Origin: f.id, Seq: f.svc.seq.Add(1)}
	data, err := encodeCommand(cmd)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := f.svc.StatFS(ctx)
	first, err := f.svc.applyCluster(ctx, data)
	if err != nil {
		t.Fatal(err)
	}
	// The same command again, as a forward retried after a lost answer,
	// through the follower and through the leader.
	for _, nd := range []*testNode{f, c.leader()} {
		again, err := nd.svc.applyCluster(ctx, data)
		if err != nil {
			t.Fatalf("retry via %s: %v (want the first outcome, not EEXIST)", nd.id, err)
		}
		if again.attr.Ino != first.attr.Ino {
			t.Fatalf("retry via %s created ino %d, first %d", nd.id, again.attr.Ino, first.attr.Ino)
		}
	}
	after, _ := f.svc.StatFS(ctx)
	if after.Inodes != before.Inodes+1 {
		t.Fatalf("inodes %d -> %d, want +1", before.Inodes, after.Inodes)
	}
	// A failing command's errno is remembered too.
	cmd.Seq = f.svc.seq.Add(1)
	data, _ = encodeCommand(cmd)
	for range 2 {
		_, err := f.svc.applyCluster(ctx, data)
		wantErrno(t, "create existing", err, syscall.EEXIST)
	}
}

// TestClusterLeaderFailover stops the leader abruptly (no leadership
// transfer, its transport dies first) while clients create files through
// the followers: every acknowledged create survives, the pause is short,
// and the stopped node catches up when it comes back.
func TestClusterLeaderFailover(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := context.Background()
	old := c.leader()
	followers := c.followers()
	var (
		mu      sync.Mutex
		acked   []string
		maxGap  time.Duration
		stop    atomic.Bool
		wg      sync.WaitGroup
		failure atomic.Value
	)
	for w, nd := range followers {
		for k := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; !stop.Load(); i++ {
					name := fmt.Sprintf("w%d-%d-%d", w, k, i)
					start := time.Now()
					_, err := nd.svc.Create(ctx, CreateRequest{Parent: RootIno, Name: name, Mode: modeFile, Now: 1})
					d := time.Since(start)
					if err != nil {
						failure.Store(fmt.Errorf("create %s via %s: %w", name, nd.id, err))
						return
					}
					mu.Lock()
					acked = append(acked, name)
					maxGap = max(maxGap, d)
					mu.Unlock()
				}
			}()
		}
	}
	time.Sleep(300 * time.Millisecond)
	killedAt := time.Now()
	c.stop(old, false)
	newLeader := c.leader()
	elected := time.Since(killedAt)
	time.Sleep(500 * time.Millisecond)
	stop.Store(true)
	wg.Wait()
	if err, _ := failure.Load().(error); err != nil {
		t.Fatal(err)
	}
	t.Logf("leader %s stopped; %s elected after %v; longest create %v; %d creates acknowledged",
		old.id, newLeader.id, elected, maxGap, len(acked))
	if maxGap > 5*time.Second {
		t.Errorf("longest pause %v > 5s", maxGap)
	}
	for _, nd := range followers {
		for _, name := range acked {
			if _, err := nd.svc.Lookup(ctx, RootIno, name); err != nil {
				t.Fatalf("acknowledged %s missing on %s: %v", name, nd.id, err)
			}
		}
	}
	if err := c.start(old, Config{Peers: c.peers}); err != nil {
		t.Fatal(err)
	}
	last := acked[len(acked)-1]
	if _, err := old.svc.Lookup(ctx, RootIno, last); err != nil {
		t.Fatalf("restarted %s does not see %s: %v", old.id, last, err)
	}
}

func TestClusterJoinPromoteRemove(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := context.Background()
	mk(t, c.leader().svc, RootIno, "before-join", modeFile)
	n4 := &testNode{id: "n4", dir: t.TempDir(), addr: freeAddr(t)}
	if err := c.start(n4, Config{Join: c.nodes[1].addr}); err != nil {
		t.Fatal(err)
	}
	c.nodes = append(c.nodes, n4)
	if _, err := n4.svc.Lookup(ctx, RootIno, "before-join"); err != nil {
		t.Fatalf("joined node: %v", err)
	}
	mk(t, n4.svc, RootIno, "from-n4", modeFile)
	suffrage := func(id string) string {
		// The leader's configuration is the newest.
		st, err := c.leader().svc.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range st.Members {
			if m.ID == id {
				return m.Suffrage
			}
		}
		return ""
	}
	if s := suffrage("n4"); s != "nonvoter" {
		t.Fatalf("n4 joined as %q", s)
	}
	if err := c.nodes[2].svc.AddMember(ctx, "n4", n4.addr, true); err != nil {
		t.Fatal(err)
	}
	if s := suffrage("n4"); s != "voter" {
		t.Fatalf("n4 after promotion: %q", s)
	}
	if err := n4.svc.RemoveMember(ctx, "n4"); err != nil {
		t.Fatal(err)
	}
	if s := suffrage("n4"); s != "" {
		t.Fatalf("n4 after removal: %q", s)
	}
	mk(t, c.nodes[0].svc, RootIno, "after-remove", modeFile)
}

// TestClusterSnapshotInstall wipes a node and brings it back after the
// log it missed was compacted: it must catch up through a snapshot.
func TestClusterSnapshotInstall(t *testing.T) {
	cl := newTestClusterTuned(t, 3, 64, 16)
	ctx := context.Background()
	victim := cl.followers()[0]
	cl.stop(victim, false)
	if err := os.RemoveAll(victim.dir); err != nil {
		t.Fatal(err)
	}
	leader := cl.leader()
	for i := range 300 {
		mk(t, leader.svc, RootIno, fmt.Sprintf("s%d", i), modeFile)
	}
	if err := leader.svc.Snapshot(ctx); err != nil {
		t.Fatal(err)
	}
	if err := cl.start(victim, Config{Peers: cl.peers}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"s0", "s299"} {
		if _, err := victim.svc.Lookup(ctx, RootIno, name); err != nil {
			t.Fatalf("wiped node after restore: lookup %s: %v", name, err)
		}
	}
	if idx := victim.svc.raft.Stats()["last_snapshot_index"]; idx == "0" || idx == "" {
		t.Errorf("the wiped node caught up without a snapshot (last_snapshot_index %q): the test missed its point", idx)
	}
	ents, err := victim.svc.ReadDir(ctx, RootIno, "", 0)
	if err != nil || len(ents) != 300 {
		t.Fatalf("wiped node lists %d entries, %v", len(ents), err)
	}
}

// TestClusterLeadershipTransferOnClose closes the leader gracefully: a
// follower takes over without waiting for an election timeout.
func TestClusterLeadershipTransferOnClose(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := context.Background()
	old := c.leader()
	f := c.followers()[0]
	start := time.Now()
	c.stop(old, true)
	mk(t, f.svc, RootIno, "after-transfer", modeFile)
	t.Logf("graceful close of leader %s: next write via %s after %v", old.id, f.id, time.Since(start))
	if _, err := c.followers()[0].svc.Lookup(ctx, RootIno, "after-transfer"); err != nil {
		t.Fatal(err)
	}
}

// fakePins is a LocalPins with a settable open set.
type fakePins struct {
	mu     sync.Mutex
	open   map[Ino]bool
	oldest uint64
	flight []BlockID
}

func (p *fakePins) OldestOpenIndex() (uint64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.oldest, p.oldest != 0
}

func (p *fakePins) InFlightBlocks(fn func(BlockID)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, id := range p.flight {
		fn(id)
	}
}

func (p *fakePins) IsOpen(ino Ino) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.open[ino]
}

// TestClusterPinsAndOrphanPurge: an inode unlinked on one node while open
// on another is not purged until no node has it open, and the collector's
// combined pins cover every node.
func TestClusterPinsAndOrphanPurge(t *testing.T) {
	c := newTestCluster(t, 3)
	ctx := context.Background()
	a, b := c.nodes[0], c.nodes[1]
	pb := &fakePins{open: map[Ino]bool{}, oldest: 7, flight: []BlockID{42}}
	b.svc.SetLocalPins(pb)
	a.svc.SetLocalPins(&fakePins{oldest: 9, flight: []BlockID{43}})
	f := mk(t, a.svc, RootIno, "victim", modeFile)
	pb.mu.Lock()
	pb.open[f.Ino] = true
	pb.mu.Unlock()
	if _, err := a.svc.Unlink(ctx, RootIno, "victim", 2); err != nil {
		t.Fatal(err)
	}
	if err := a.svc.Purge(ctx, f.Ino); err != nil {
		t.Fatal(err)
	}
	if _, err := c.nodes[2].svc.GetAttr(ctx, f.Ino); err != nil {
		t.Fatalf("orphan open on %s was purged by %s: %v", b.id, a.id, err)
	}
	np, err := c.nodes[2].svc.ClusterPins(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !np.HasOpen || np.OldestOpen != 7 || len(np.InFlight) != 2 {
		t.Fatalf("combined pins %+v", np)
	}
	pb.mu.Lock()
	pb.open[f.Ino] = false
	pb.mu.Unlock()
	if err := b.svc.Purge(ctx, f.Ino); err != nil {
		t.Fatal(err)
	}
	_, err = a.svc.GetAttr(ctx, f.Ino)
	wantErrno(t, "getattr purged orphan", err, syscall.ENOENT)
	// A member that cannot be asked blocks both.
	c.stop(c.nodes[2], false)
	if _, err := a.svc.ClusterPins(ctx); err == nil {
		t.Fatal("ClusterPins with a member down succeeded")
	}
}
