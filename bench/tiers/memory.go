package tiers

import (
	"context"
	"errors"
	"fmt"

	"github.com/datenlord/datenlord-go/cache"
)

// pagesPerBlock is how many pages the benchmark's blocks hold.
const pagesPerBlock = 8

// errNoBackend fails any read that misses every tier: the benchmark only
// reads pages it inserted, so a miss is a bug, not a slow row.
var errNoBackend = errors.New("benchmark page missed the cache (no backend)")

// noBackend is the Cache backend of the memory row.
type noBackend struct{}

// ReadAt fails: see errNoBackend.
func (noBackend) ReadAt(context.Context, uint64, int64, []byte) (int, error) { return 0, errNoBackend }

// workingPages returns how many pages of size the working set holds: at
// least 8, a whole number of blocks.
func (r *runner) workingPages(size int) int {
	n := max(int(r.cfg.WorkingSet/int64(size)), pagesPerBlock)
	return (n + pagesPerBlock - 1) / pagesPerBlock * pagesPerBlock
}

// fillPattern writes a deterministic, non-constant pattern (pages that
// compress or dedupe would flatter nothing here, but zeros can hide bugs).
func fillPattern(b []byte, seed uint64) {
	x := seed*0x9E3779B97F4A7C15 + 1
	for i := 0; i+8 <= len(b); i += 8 {
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		b[i], b[i+1], b[i+2], b[i+3] = byte(x), byte(x>>8), byte(x>>16), byte(x>>24)
		b[i+4], b[i+5], b[i+6], b[i+7] = byte(x>>32), byte(x>>40), byte(x>>48), byte(x>>56)
	}
}

// memorySetup fills a memory-only Cache with the working set; the tier
// row reads random pages of it through Cache.ReadPage, the memcpy row
// copies random pages of a plain buffer of the same size.
func (r *runner) memorySetup(ctx context.Context, size int) (setupResult, error) {
	n := r.workingPages(size)
	stride := int64(size + cache.SlotHeaderSize)
	c, err := cache.New(cache.Config{PageSize: size, MemBytes: int64(n+64)*stride + 64<<20, Logger: r.log}, noBackend{})
	if err != nil {
		return setupResult{}, fmt.Errorf("memory cache: %w", err)
	}
	block := make([]byte, pagesPerBlock*size)
	for b := range n / pagesPerBlock {
		fillPattern(block, uint64(b))
		c.PutBlock(ctx, uint64(b+1), block, cache.AccessRandom)
	}
	src := make([]byte, n*size)
	fillPattern(src, 99)
	keyOf := func(i int) cache.PageKey {
		p := pick(i, n)
		return cache.PageKey{Block: uint64(p/pagesPerBlock + 1), Index: uint32(p % pagesPerBlock)}
	}
	wls := map[string]Workload{
		TierMemory: func(_ context.Context, _ int) (Op, func(), error) {
			dst := make([]byte, size)
			return func(ctx context.Context, i int) error {
				k := keyOf(i)
				got, err := c.ReadPage(ctx, k, size, dst, cache.AccessRandom)
				if err != nil {
					return fmt.Errorf("read page %d/%d: %w", k.Block, k.Index, err)
				}
				if got != size {
					return fmt.Errorf("read page %d/%d: %d bytes, want %d", k.Block, k.Index, got, size)
				}
				return nil
			}, func() {}, nil
		},
		BaseMemcpy: func(_ context.Context, _ int) (Op, func(), error) {
			dst := make([]byte, size)
			return func(_ context.Context, i int) error {
				p := pick(i, n)
				copy(dst, src[p*size:(p+1)*size])
				return nil
			}, func() {}, nil
		},
	}
	return setupResult{workloads: wls, cleanup: func() { _ = c.Close() }}, nil
}
