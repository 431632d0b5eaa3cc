package cluster

import (
	"bufio"
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/datenlord/datenlord-go/cluster/clustertest"
)

const etcdctlPath = "/usr/bin/etcdctl"

// etcdctl runs etcdctl against endpoints, retrying (as a user would) until
// it succeeds or timeout passes; it returns the output.
func etcdctl(t *testing.T, timeout time.Duration, stdin string, endpoints []string, args ...string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		full := append([]string{"--endpoints", strings.Join(endpoints, ","), "--command-timeout", "3s", "--dial-timeout", "2s"}, args...)
		cmd := exec.CommandContext(ctx, etcdctlPath, full...)
		cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		cancel()
		if err == nil {
			return string(out)
		}
		if time.Now().After(deadline) {
			t.Fatalf("etcdctl %v: %v\n%s", args, err, out)
		}
		t.Logf("etcdctl %v: %v: %s (retrying)", args, err, strings.TrimSpace(string(out)))
		time.Sleep(300 * time.Millisecond)
	}
}

func kvAddrs(nodes []*clustertest.Node) []string {
	var out []string
	for _, n := range nodes {
		if n.Running() {
			out = append(out, n.KVAddr())
		}
	}
	return out
}

// lineReader collects the lines of a background command's output.
type lineReader struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineReader) waitFor(t *testing.T, timeout time.Duration, want ...string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		l.mu.Lock()
		got := strings.Join(l.lines, "\n")
		l.mu.Unlock()
		if strings.Contains(got, strings.Join(want, "\n")) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("output %q lacks %q", got, strings.Join(want, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// background starts etcdctl in the background and collects its output.
func background(t *testing.T, endpoints []string, args ...string) *lineReader {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	full := append([]string{"--endpoints", strings.Join(endpoints, ",")}, args...)
	cmd := exec.CommandContext(ctx, etcdctlPath, full...)
	cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l := &lineReader{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			l.mu.Lock()
			l.lines = append(l.lines, sc.Text())
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() { cancel(); cmd.Wait(); <-done })
	return l
}

// TestKVEtcdctl is the KV interface's acceptance 1: the real etcdctl
// against --kv-listen of a 3-node cluster: put/get/del/txn/watch/lease,
// then the same while the leader is SIGKILLed, with a lease kept alive
// through a follower surviving the leader change.
func TestKVEtcdctl(t *testing.T) {
	if _, err := os.Stat(etcdctlPath); err != nil {
		t.Skipf("SKIP: %s is missing (ci/client-deps.sh installs etcd-client): %v", etcdctlPath, err)
	}
	c := clustertest.New(t, clustertest.Options{KV: true})
	n := c.Nodes()
	one := func(i int) []string { return []string{n[i].KVAddr()} }

	if out := etcdctl(t, 20*time.Second, "", one(0), "put", "foo", "bar"); !strings.Contains(out, "OK") {
		t.Fatalf("put: %q", out)
	}
	if out := etcdctl(t, 10*time.Second, "", one(1), "get", "foo"); out != "foo\nbar\n" {
		t.Fatalf("get on another node: %q", out)
	}
	etcdctl(t, 10*time.Second, "", one(2), "put", "foo2", "baz")
	if out := etcdctl(t, 10*time.Second, "", one(2), "get", "--prefix", "foo"); out != "foo\nbar\nfoo2\nbaz\n" {
		t.Fatalf("get --prefix: %q", out)
	}
	if out := etcdctl(t, 10*time.Second, "", one(1), "del", "foo2"); out != "1\n" {
		t.Fatalf("del: %q", out)
	}
	txn := "value(\"foo\") = \"bar\"\n\nput txnres yes\n\nput txnres no\n\n"
	if out := etcdctl(t, 10*time.Second, txn, one(0), "txn", "--interactive"); !strings.Contains(out, "SUCCESS") {
		t.Fatalf("txn: %q", out)
	}
	if out := etcdctl(t, 10*time.Second, "", one(2), "get", "txnres", "--print-value-only"); out != "yes\n" {
		t.Fatalf("txn result: %q", out)
	}

	// Watch on node 3, write on node 1.
	w := background(t, one(2), "watch", "--prefix", "w/")
	time.Sleep(500 * time.Millisecond)
	etcdctl(t, 10*time.Second, "", one(0), "put", "w/1", "v1")
	etcdctl(t, 10*time.Second, "", one(1), "del", "w/1")
	w.waitFor(t, 10*time.Second, "PUT", "w/1", "v1", "DELETE", "w/1")

	// Leases.
	out := etcdctl(t, 10*time.Second, "", one(1), "lease", "grant", "30")
	m := regexp.MustCompile(`lease ([0-9a-f]+) granted with TTL\((\d+)s\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("lease grant: %q", out)
	}
	id := m[1]
	etcdctl(t, 10*time.Second, "", one(0), "put", "--lease="+id, "leased", "v")
	if out := etcdctl(t, 10*time.Second, "", one(2), "lease", "timetolive", "--keys", id); !strings.Contains(out, "attached keys([leased])") {
		t.Fatalf("timetolive: %q", out)
	}
	etcdctl(t, 10*time.Second, "", one(2), "lease", "revoke", id)
	if out := etcdctl(t, 10*time.Second, "", one(0), "get", "leased"); out != "" {
		t.Fatalf("key of a revoked lease: %q", out)
	}

	// A short lease kept alive through a follower survives the leader's
	// death; the cluster keeps answering etcdctl with all endpoints.
	leader, err := c.Leader()
	if err != nil {
		t.Fatal(err)
	}
	follower := c.Others(leader)[0]
	out = etcdctl(t, 10*time.Second, "", []string{follower.KVAddr()}, "lease", "grant", "4")
	m = regexp.MustCompile(`lease ([0-9a-f]+) granted`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("lease grant: %q", out)
	}
	short := m[1]
	etcdctl(t, 10*time.Second, "", []string{follower.KVAddr()}, "put", "--lease="+short, "alive", "yes")
	ka := background(t, []string{follower.KVAddr()}, "lease", "keep-alive", short)
	ka.waitFor(t, 10*time.Second, "lease "+short+" keepalived")
	watchAll := background(t, []string{follower.KVAddr()}, "watch", "k/")

	all := kvAddrs(n)
	t.Logf("killing leader %s", leader)
	killed := time.Now()
	leader.Kill()
	etcdctl(t, 30*time.Second, "", all, "put", "k/", "after-kill")
	t.Logf("first put after the kill took %v", time.Since(killed))
	if out := etcdctl(t, 30*time.Second, "", all, "get", "k/", "--print-value-only"); out != "after-kill\n" {
		t.Fatalf("get after kill: %q", out)
	}
	watchAll.waitFor(t, 10*time.Second, "PUT", "k/", "after-kill")
	time.Sleep(6 * time.Second) // beyond the short lease's TTL
	if out := etcdctl(t, 20*time.Second, "", all, "get", "alive", "--print-value-only"); out != "yes\n" {
		t.Fatalf("kept-alive key after the leader change: %q", out)
	}
	txn = "value(\"k/\") = \"after-kill\"\n\nput txn2 yes\n\n\n"
	if out := etcdctl(t, 20*time.Second, txn, all, "txn"); !strings.HasPrefix(out, "SUCCESS") {
		t.Fatalf("txn after kill: %q", out)
	}
	leader.Start()
	if out := etcdctl(t, 30*time.Second, "", []string{leader.KVAddr()}, "get", "txn2", "--print-value-only"); out != "yes\n" {
		t.Fatalf("restarted node: %q", out)
	}
}

// kvInput and kvOutput are the porcupine model's operation values.
type kvInput struct {
	put   bool
	key   string
	value string
}

type kvOutput struct {
	value   string
	unknown bool // a put whose outcome is unknown
}

// kvModel is a register per key: partitioned by key.
var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(kvInput).key
			if _, ok := by[k]; !ok {
				keys = append(keys, k)
			}
			by[k] = append(by[k], op)
		}
		var out [][]porcupine.Operation
		for _, k := range keys {
			out = append(out, by[k])
		}
		return out
	},
	Init: func() interface{} { return "" },
	Step: func(state, input, output interface{}) (bool, interface{}) {
		in, out := input.(kvInput), output.(kvOutput)
		if in.put {
			return true, in.value
		}
		return out.value == state.(string), state
	},
	Equal: func(a, b interface{}) bool { return a == b },
	DescribeOperation: func(input, output interface{}) string {
		in, out := input.(kvInput), output.(kvOutput)
		if in.put {
			if out.unknown {
				return fmt.Sprintf("put(%s, %s) -> ?", in.key, in.value)
			}
			return fmt.Sprintf("put(%s, %s)", in.key, in.value)
		}
		return fmt.Sprintf("get(%s) -> %q", in.key, out.value)
	},
}

// TestKVLinearizable is acceptance 2: clientv3 clients on every node put
// and get a few keys while the leader is SIGKILLed twice (and restarted);
// porcupine must find the history linearizable. A put that failed or timed
// out may have taken effect: it stays in the history with a return time at
// infinity. A failed get has no effect and is left out. The same history
// with one stale read injected must be reported illegal.
func TestKVLinearizable(t *testing.T) {
	c := clustertest.New(t, clustertest.Options{KV: true})
	nodes := c.Nodes()
	start := time.Now()
	var mu sync.Mutex
	var ops []porcupine.Operation
	unknown, okOps := 0, 0
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	keys := []string{"lk0", "lk1", "lk2"}
	const clientsPerNode = 2
	for i, n := range nodes {
		for j := range clientsPerNode {
			cid := i*clientsPerNode + j
			cli, err := clientv3.New(clientv3.Config{Endpoints: []string{n.KVAddr()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			wg.Add(1)
			go func() {
				defer wg.Done()
				rng := rand.New(rand.NewPCG(uint64(cid), 7))
				for seq := 0; ctx.Err() == nil; seq++ {
					in := kvInput{key: keys[rng.IntN(len(keys))], put: rng.IntN(2) == 0}
					if in.put {
						in.value = fmt.Sprintf("c%d-%d", cid, seq)
					}
					octx, ocancel := context.WithTimeout(context.Background(), 2*time.Second)
					call := time.Since(start).Nanoseconds()
					var out kvOutput
					var err error
					if in.put {
						_, err = cli.Put(octx, in.key, in.value)
					} else {
						var r *clientv3.GetResponse
						r, err = cli.Get(octx, in.key)
						if err == nil && len(r.Kvs) > 0 {
							out.value = string(r.Kvs[0].Value)
						}
					}
					ret := time.Since(start).Nanoseconds()
					ocancel()
					mu.Lock()
					switch {
					case err == nil:
						okOps++
						ops = append(ops, porcupine.Operation{ClientId: cid, Input: in, Call: call, Output: out, Return: ret})
					case in.put:
						unknown++
						out.unknown = true
						ops = append(ops, porcupine.Operation{ClientId: cid, Input: in, Call: call, Output: out, Return: math.MaxInt64})
					}
					mu.Unlock()
					if err != nil {
						time.Sleep(100 * time.Millisecond)
					}
				}
			}()
		}
	}
	for round := range 2 {
		time.Sleep(3 * time.Second)
		leader, err := c.Leader()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("round %d: killing leader %s", round, leader)
		leader.Kill()
		time.Sleep(3 * time.Second)
		leader.Start()
	}
	time.Sleep(2 * time.Second)
	cancel()
	wg.Wait()
	t.Logf("history: %d operations completed, %d puts of unknown outcome", okOps, unknown)
	if okOps < 200 {
		t.Fatalf("only %d operations completed", okOps)
	}
	// Operations of one client are sequential; an unknown put ends its
	// client's sequence only in porcupine's eyes, which is fine: its
	// client id is reused, but porcupine does not require per-client
	// sequentiality.
	res := porcupine.CheckOperationsTimeout(kvModel, ops, time.Minute)
	if res != porcupine.Ok {
		t.Fatalf("history is not linearizable (%v)", res)
	}
	// The checker must catch a stale read: a get returning a value that was
	// overwritten before the get was called.
	bad := injectStaleRead(ops)
	if bad == nil {
		t.Log("no stale read to inject (no overwritten value found)")
		return
	}
	if porcupine.CheckOperationsTimeout(kvModel, bad, time.Minute) != porcupine.Illegal {
		t.Fatal("an injected stale read was not detected")
	}
}

// injectStaleRead appends a get that returns a value of a completed put
// that a later completed put (on the same key, called after the first
// returned) overwrote, called after both returned.
func injectStaleRead(ops []porcupine.Operation) []porcupine.Operation {
	for i, a := range ops {
		ai := a.Input.(kvInput)
		if !ai.put || a.Return == math.MaxInt64 {
			continue
		}
		for _, b := range ops[i+1:] {
			bi := b.Input.(kvInput)
			if !bi.put || bi.key != ai.key || b.Return == math.MaxInt64 || b.Call <= a.Return {
				continue
			}
			// No unknown put of a's value can appear later (values are
			// unique), so a get of it after b returned is stale.
			end := b.Return
			for _, o := range ops {
				if o.Return != math.MaxInt64 && o.Return > end {
					end = o.Return
				}
			}
			stale := porcupine.Operation{ClientId: 1 << 20, Input: kvInput{key: ai.key}, Output: kvOutput{value: ai.value}, Call: end + 1, Return: end + 2}
			return append(append([]porcupine.Operation(nil), ops...), stale)
		}
	}
	return nil
}
