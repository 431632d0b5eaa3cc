package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/datenlord/datenlord-go/kv"
	"github.com/datenlord/datenlord-go/meta"
	"github.com/datenlord/datenlord-go/tcpfallback"
)

const etcdBinary = "/usr/bin/etcd"

// kvBench parameters: clients issue one request at a time each, for
// kvRoundTime per round; the median of kvRounds rounds is reported.
const (
	kvClients   = 32
	kvRounds    = 3
	kvRoundTime = 2 * time.Second
)

func freePort(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startEtcd runs /usr/bin/etcd on free loopback ports with a temporary
// data dir and returns its client address.
func startEtcd(tb testing.TB) string {
	return startEtcdCluster(tb, 1)[0]
}

// startEtcdCluster runs an etcd cluster of n members on free loopback
// ports and returns their client addresses.
func startEtcdCluster(tb testing.TB, n int) []string {
	tb.Helper()
	var clients, peers, initial []string
	for i := range n {
		clients, peers = append(clients, freePort(tb)), append(peers, freePort(tb))
		initial = append(initial, fmt.Sprintf("m%d=http://%s", i, peers[i]))
	}
	dir := tb.TempDir()
	for i := range n {
		name := fmt.Sprintf("m%d", i)
		ctx, cancel := context.WithCancel(context.Background())
		cmd := exec.CommandContext(ctx, etcdBinary,
			"--name", name, "--data-dir", filepath.Join(dir, name),
			"--listen-client-urls", "http://"+clients[i], "--advertise-client-urls", "http://"+clients[i],
			"--listen-peer-urls", "http://"+peers[i], "--initial-advertise-peer-urls", "http://"+peers[i],
			"--initial-cluster", strings.Join(initial, ","), "--log-level", "error")
		logf, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			tb.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { cancel(); cmd.Wait(); logf.Close() })
	}
	return clients
}

// startDatenlordKVCluster runs n metadata services with KV servers in
// this process, as a cluster over loopback node transports, and returns
// the KV addresses.
func startDatenlordKVCluster(tb testing.TB, n int) []string {
	tb.Helper()
	logger := slog.New(slog.DiscardHandler)
	peers := map[string]string{}
	var trs []*tcpfallback.Transport
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range n {
		id := fmt.Sprintf("n%d", i)
		tr, err := tcpfallback.New(ctx, tcpfallback.Config{NodeID: id, Listen: freePort(tb), Secret: []byte("kv-bench-secret-0123456789abcdef"), Logger: logger})
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { tr.Close() })
		trs = append(trs, tr)
		peers[id] = tr.Addr()
	}
	addrs := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, tr := range trs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := kv.NewMachine()
			svc, err := meta.Open(ctx, meta.Config{Dir: tb.TempDir(), NodeID: fmt.Sprintf("n%d", i), Transport: tr, Peers: peers, KV: m, Logger: logger})
			if err != nil {
				errs[i] = err
				return
			}
			s, err := kv.New(kv.Config{Meta: svc, Machine: m, Transport: tr, Logger: logger})
			if err == nil {
				err = s.Serve(ctx, "127.0.0.1:0")
			}
			if err != nil {
				svc.Close()
				errs[i] = err
				return
			}
			tb.Cleanup(func() { s.Stop(); svc.Close() })
			addrs[i] = s.Addr()
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			tb.Fatal(err)
		}
	}
	return addrs
}

// startDatenlordKV runs a single-node metadata service with the KV
// server in this process (the node's KV stack without FUSE) and returns
// its address.
func startDatenlordKV(tb testing.TB) string {
	tb.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	m := kv.NewMachine()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc, err := meta.Open(ctx, meta.Config{Dir: tb.TempDir(), KV: m, Logger: logger})
	if err != nil {
		tb.Fatal(err)
	}
	s, err := kv.New(kv.Config{Meta: svc, Machine: m, Logger: logger})
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.Serve(ctx, "127.0.0.1:0"); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Stop(); svc.Close() })
	return s.Addr()
}

func kvClient(tb testing.TB, addrs ...string) *clientv3.Client {
	tb.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: addrs, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cli.Close() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := cli.Put(ctx, "warmup", "x")
		cancel()
		if err == nil {
			return cli
		}
		if time.Now().After(deadline) {
			tb.Fatalf("KV server at %s: %v", addrs, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kvRate runs kvClients concurrent loops of op for d and returns ops/s.
func kvRate(tb testing.TB, d time.Duration, op func(ctx context.Context, client, i int) error) float64 {
	end := time.Now().Add(d)
	var n atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	start := time.Now()
	for c := range kvClients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(end); i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := op(ctx, c, i)
				cancel()
				if err != nil {
					failed.Store(err)
					return
				}
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	if err, ok := failed.Load().(error); ok {
		tb.Fatal(err)
	}
	return float64(n.Load()) / time.Since(start).Seconds()
}

func kvMedian(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// BenchmarkKV compares KV put and get throughput (linearizable gets) of
// datenlord's KV server with an etcd server on this machine, both single
// nodes, in the same run: kvClients concurrent clients, median of
// kvRounds rounds.
//
// A single datenlord node serves a linearizable get from its state
// without a round trip (all writes are applied where they are
// acknowledged), while etcd always takes a ReadIndex; BenchmarkKVCluster
// compares three nodes of each, where both confirm leadership per read.
func BenchmarkKV(b *testing.B) {
	if _, err := os.Stat(etcdBinary); err != nil {
		b.Skipf("SKIP: %s is missing (Debian etcd-server; ci/client-deps.sh installs it): %v", etcdBinary, err)
	}
	runKVBench(b, []kvTarget{
		{"datenlord", []string{startDatenlordKV(b)}},
		{"etcd", []string{startEtcd(b)}},
	})
}

// BenchmarkKVCluster is BenchmarkKV with a three-node datenlord cluster
// and a three-member etcd cluster on this machine; clients are given
// every node's endpoint (followers forward writes to the leader).
func BenchmarkKVCluster(b *testing.B) {
	if _, err := os.Stat(etcdBinary); err != nil {
		b.Skipf("SKIP: %s is missing (Debian etcd-server; ci/client-deps.sh installs it): %v", etcdBinary, err)
	}
	runKVBench(b, []kvTarget{
		{"datenlord", startDatenlordKVCluster(b, 3)},
		{"etcd", startEtcdCluster(b, 3)},
	})
}

// kvTarget is a KV service under test: a name and its endpoints.
type kvTarget struct {
	name  string
	addrs []string
}

// runKVBench measures put and get rates of each target and reports them
// and the datenlord/etcd ratios.
func runKVBench(b *testing.B, targets []kvTarget) {
	value := make([]byte, 256)
	results := map[string]float64{}
	for range b.N {
		for _, tg := range targets {
			cli := kvClient(b, tg.addrs...)
			var puts, gets []float64
			for range kvRounds {
				puts = append(puts, kvRate(b, kvRoundTime, func(ctx context.Context, c, i int) error {
					_, err := cli.Put(ctx, fmt.Sprintf("bench/%d/%d", c, i%1000), string(value))
					return err
				}))
				gets = append(gets, kvRate(b, kvRoundTime, func(ctx context.Context, c, i int) error {
					_, err := cli.Get(ctx, fmt.Sprintf("bench/%d/%d", c, i%1000))
					return err
				}))
			}
			results[tg.name+"-put"] = kvMedian(puts)
			results[tg.name+"-get"] = kvMedian(gets)
			b.Logf("%s: put %.0f ops/s (rounds %.0f), get %.0f ops/s (rounds %.0f)", tg.name, kvMedian(puts), puts, kvMedian(gets), gets)
		}
	}
	for _, k := range []string{"datenlord-put", "datenlord-get", "etcd-put", "etcd-get"} {
		b.ReportMetric(results[k], k+"-ops/s")
	}
	b.ReportMetric(results["datenlord-put"]/results["etcd-put"], "put-ratio")
	b.ReportMetric(results["datenlord-get"]/results["etcd-get"], "get-ratio")
}
