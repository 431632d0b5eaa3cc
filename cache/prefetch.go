package cache

import (
	"context"
	"fmt"
)

// contains reports whether the memory tier holds page key (without
// touching the eviction policy: a prefetch check is not an access).
func (m *memoryTier) contains(key PageKey) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.index[key]
	return ok
}

// Prefetch loads pages [fromPage, end of block) of a block into the
// tiers ahead of a sequential reader, with ONE ranged backend read that
// starts at the first page memory does not hold (a whole-block GET for S3
// rather than one request per page). blockLen is the block's valid
// length. Pages already cached are not read again, but a page inside the
// range that is cached is re-offered, which costs no backend I/O.
//
// Prefetch is best effort: readers never wait for it, and a concurrent
// ReadPage of the same page may fetch it again.
func (c *Cache) Prefetch(ctx context.Context, block uint64, blockLen int, fromPage uint32, access Access) error {
	ps := c.cfg.PageSize
	pages := uint32((blockLen + ps - 1) / ps)
	first := fromPage
	for first < pages && c.memory.contains(PageKey{Block: block, Index: first}) {
		first++
	}
	if first >= pages {
		return nil
	}
	start := int(first) * ps
	buf := make([]byte, blockLen-start)
	n, err := c.backend.ReadAt(ctx, block, int64(start), buf)
	if err != nil {
		return fmt.Errorf("cache prefetch block 0x%016x from page %d: %w", block, first, err)
	}
	if n < len(buf) {
		return fmt.Errorf("cache prefetch block 0x%016x from page %d: %w: %d of %d bytes", block, first, ErrShortPage, n, len(buf))
	}
	for off, idx := 0, first; off < len(buf); off, idx = off+ps, idx+1 {
		key := PageKey{Block: block, Index: idx}
		page := buf[off:min(off+ps, len(buf))]
		for _, t := range c.tiers {
			c.offer(ctx, t, key, page, access)
		}
	}
	return nil
}
