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
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/datenlord/datenlord-go/kv"
	"github.com/datenlord/datenlord-go/meta"
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
	tb.Helper()
	client, peer := freePort(tb), freePort(tb)
	dir := tb.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, etcdBinary,
		"--name", "bench", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", "http://"+client, "--advertise-client-urls", "http://"+client,
		"--listen-peer-urls", "http://"+peer, "--initial-advertise-peer-urls", "http://"+peer,
		"--initial-cluster", "bench=http://"+peer, "--log-level", "error")
	logf, err := os.Create(filepath.Join(dir, "etcd.log"))
	if err != nil {
		tb.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cancel(); cmd.Wait(); logf.Close() })
	return client
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

func kvClient(tb testing.TB, addr string) *clientv3.Client {
	tb.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{addr}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
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
			tb.Fatalf("KV server at %s: %v", addr, err)
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
func BenchmarkKV(b *testing.B) {
	if _, err := os.Stat(etcdBinary); err != nil {
		b.Skipf("SKIP: %s is missing (Debian etcd-server; ci/client-deps.sh installs it): %v", etcdBinary, err)
	}
	value := make([]byte, 256)
	targets := []struct{ name, addr string }{
		{"datenlord", startDatenlordKV(b)},
		{"etcd", startEtcd(b)},
	}
	results := map[string]float64{}
	for range b.N {
		for _, tg := range targets {
			cli := kvClient(b, tg.addr)
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
