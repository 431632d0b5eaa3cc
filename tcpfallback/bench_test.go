package tcpfallback

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/datenlord/datenlord-go/internal/pingpong"
)

// The benchmarks model a page read: a 16-byte request, a response of the
// page size. Each RPC figure has a raw Go TCP ping-pong of the same shape
// next to it, over the same loopback in the same run (issue 5 acceptance 6
// targets RPC p50 <= 1.5x raw).

var benchSizes = []int{4 << 10, 64 << 10}

// rawServer is the raw TCP ping-pong baseline (internal/pingpong).
func rawServer(b *testing.B) string {
	addr, stop, err := pingpong.Serve(1 << 20)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(stop)
	return addr
}

type rawClient struct {
	c   net.Conn
	req [16]byte
}

func newRawClient(b *testing.B, addr string, size int) *rawClient {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	rc := &rawClient{c: c}
	binary.LittleEndian.PutUint32(rc.req[:], uint32(size))
	return rc
}

func (rc *rawClient) roundTrip(buf []byte) error {
	if _, err := rc.c.Write(rc.req[:]); err != nil {
		return err
	}
	_, err := io.ReadFull(rc.c, buf)
	return err
}

func rpcPair(b *testing.B) (*testNode, *testNode) {
	srv := newNode(b, "server", func(c *Config) { c.MaxInFlight = 1024 })
	page := make([]byte, 1<<20)
	srv.Handle(opSized, func(_ context.Context, _ string, req []byte) ([]byte, error) {
		return page[:binary.LittleEndian.Uint32(req)], nil
	})
	cli := newNode(b, "client", func(c *Config) { c.MaxInFlight = 1024 })
	return srv, cli
}

func reportPercentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-µs")
}

// BenchmarkRoundTrip measures sequential round-trip latency (p50, p99)
// and single-stream throughput.
func BenchmarkRoundTrip(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprintf("raw/%dKiB", size>>10), func(b *testing.B) {
			rc := newRawClient(b, rawServer(b), size)
			buf := make([]byte, size)
			lat := make([]time.Duration, 0, b.N)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				if err := rc.roundTrip(buf); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			reportPercentiles(b, lat)
		})
		b.Run(fmt.Sprintf("rpc/%dKiB", size>>10), func(b *testing.B) {
			srv, cli := rpcPair(b)
			ctx := context.Background()
			var req [16]byte
			binary.LittleEndian.PutUint32(req[:], uint32(size))
			buf := make([]byte, size)
			if _, err := cli.CallInto(ctx, srv.Addr(), opSized, req[:], buf); err != nil {
				b.Fatal(err)
			}
			lat := make([]time.Duration, 0, b.N)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				start := time.Now()
				if _, err := cli.CallInto(ctx, srv.Addr(), opSized, req[:], buf); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(start))
			}
			b.StopTimer()
			reportPercentiles(b, lat)
		})
	}
}

// BenchmarkThroughput measures concurrent throughput: raw uses one
// connection per goroutine, the RPC multiplexes all goroutines on one.
func BenchmarkThroughput(b *testing.B) {
	for _, size := range benchSizes {
		b.Run(fmt.Sprintf("raw/%dKiB", size>>10), func(b *testing.B) {
			addr := rawServer(b)
			var mu sync.Mutex
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				mu.Lock()
				rc := newRawClient(b, addr, size)
				mu.Unlock()
				buf := make([]byte, size)
				for pb.Next() {
					if err := rc.roundTrip(buf); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
		b.Run(fmt.Sprintf("rpc/%dKiB", size>>10), func(b *testing.B) {
			srv, cli := rpcPair(b)
			var req [16]byte
			binary.LittleEndian.PutUint32(req[:], uint32(size))
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				buf := make([]byte, size)
				for pb.Next() {
					if _, err := cli.CallInto(context.Background(), srv.Addr(), opSized, req[:], buf); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
