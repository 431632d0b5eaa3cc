package kv

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

// BenchmarkPutParallel measures puts of 256-byte values by 32 concurrent
// clients on one node (the profile target of the write path).
func BenchmarkPutParallel(b *testing.B) {
	_, cli := startSingle(b, nil, "", "")
	value := string(make([]byte, 256))
	const clients = 32
	var wg sync.WaitGroup
	b.ResetTimer()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := c; i < b.N; i += clients {
				if _, err := cli.Put(context.Background(), fmt.Sprintf("bench/%d/%d", c, i%1000), value); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// BenchmarkGetParallel measures linearizable gets by 32 concurrent clients.
func BenchmarkGetParallel(b *testing.B) {
	_, cli := startSingle(b, nil, "", "")
	if _, err := cli.Put(context.Background(), "bench/k", string(make([]byte, 256))); err != nil {
		b.Fatal(err)
	}
	const clients = 32
	var wg sync.WaitGroup
	b.ResetTimer()
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := c; i < b.N; i += clients {
				if _, err := cli.Get(context.Background(), "bench/k"); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}
