package cache

import (
	"context"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

const benchPage = 64 << 10

func benchCache(b *testing.B, slots int) *Cache {
	backend := newBackend(b)
	c, err := New(Config{PageSize: benchPage, MemBytes: int64(slots) * (slotHeaderSize + benchPage), Registerer: prometheus.NewRegistry()}, backend)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	return c
}

// BenchmarkMemoryHit reads one 64 KiB page that is always in memory: the
// steady-state hit path (lock, pin, copy, CRC-32C check).
func BenchmarkMemoryHit(b *testing.B) {
	c := benchCache(b, 16)
	ctx := context.Background()
	page := make([]byte, benchPage)
	c.PutBlock(ctx, 1, page, AccessRandom)
	dst := make([]byte, benchPage)
	b.SetBytes(benchPage)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.ReadPage(ctx, PageKey{1, 0}, benchPage, dst, AccessRandom); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMemoryHitParallel is BenchmarkMemoryHit from GOMAXPROCS readers
// over 64 pages.
func BenchmarkMemoryHitParallel(b *testing.B) {
	c := benchCache(b, 64)
	ctx := context.Background()
	c.PutBlock(ctx, 1, make([]byte, 64*benchPage), AccessRandom)
	b.SetBytes(benchPage)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		dst := make([]byte, benchPage)
		i := uint32(0)
		for pb.Next() {
			if _, err := c.ReadPage(ctx, PageKey{1, i % 64}, benchPage, dst, AccessRandom); err != nil {
				b.Error(err)
				return
			}
			i++
		}
	})
}

// BenchmarkMemoryInsertEvict puts distinct pages into a full memory tier:
// every Put evicts the least recently used page and reuses its slot.
func BenchmarkMemoryInsertEvict(b *testing.B) {
	c := benchCache(b, 256)
	ctx := context.Background()
	page := make([]byte, benchPage)
	for i := range 512 { // fill the arena and the index
		_ = c.memory.Put(ctx, PageKey{uint64(i), 0}, page, AccessRandom)
	}
	b.SetBytes(benchPage)
	b.ReportAllocs()
	i := uint64(1 << 20)
	for b.Loop() {
		if err := c.memory.Put(ctx, PageKey{i, 0}, page, AccessRandom); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
