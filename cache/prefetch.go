package cache

import (
	"context"
	"fmt"
	"sync"
)

// contains reports whether the memory tier holds page key (without
// touching the eviction policy: a prefetch check is not an access).
func (m *memoryTier) contains(key PageKey) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.index[key]
	return ok
}

// prefetchFlight is one block prefetch in flight: a single ranged backend
// read of pages [first, end) of a block. A ReadPage that misses one of
// those pages waits for it rather than reading the page again, so a
// sequential reader that catches up with its readahead costs no extra
// request.
type prefetchFlight struct {
	first, end uint32
	done       chan struct{}
	// buf holds pages first..end-1 back to back, valid after done when
	// err is nil; it is never written again, so waiters copy from it
	// without further locking.
	buf []byte
	err error
}

// prefetchTable maps a block to its prefetch in flight (at most one per
// block). The zero value is ready for use.
type prefetchTable struct {
	mu sync.Mutex
	m  map[uint64]*prefetchFlight
}

// StartPrefetch registers a prefetch of pages [fromPage, end of block) of
// a block, skipping the leading pages memory already holds, and returns the
// function that performs it (see Prefetch); run must then be called exactly
// once, typically from another goroutine once a concurrency bound admits
// it. From the moment StartPrefetch returns, a ReadPage miss of a page in
// that range waits for run instead of reading the page itself, so callers
// can register a prefetch before the reader needs the block and queue the
// backend read behind others without the reader racing it. run is nil when
// there is nothing to load: every page is cached, or a prefetch of the
// block is already in flight.
func (c *Cache) StartPrefetch(block uint64, blockLen int, fromPage uint32, access Access) (run func(ctx context.Context) error) {
	ps := c.cfg.PageSize
	pages := uint32((blockLen + ps - 1) / ps)
	first := fromPage
	for first < pages && c.cached(PageKey{Block: block, Index: first}) {
		first++
	}
	if first >= pages {
		return nil
	}
	c.pf.mu.Lock()
	if c.pf.m[block] != nil {
		c.pf.mu.Unlock()
		return nil
	}
	if c.pf.m == nil {
		c.pf.m = make(map[uint64]*prefetchFlight)
	}
	f := &prefetchFlight{first: first, end: pages, done: make(chan struct{})}
	c.pf.m[block] = f
	c.pf.mu.Unlock()
	return func(ctx context.Context) error {
		f.err = c.prefetch(ctx, block, blockLen, f, access)
		// Offered to the tiers before it leaves the table: a reader that
		// finds no flight finds the pages in memory (or fetches them).
		c.pf.mu.Lock()
		delete(c.pf.m, block)
		c.pf.mu.Unlock()
		close(f.done)
		return f.err
	}
}

// prefetch reads f's pages with one ranged backend read and offers them to
// every tier.
func (c *Cache) prefetch(ctx context.Context, block uint64, blockLen int, f *prefetchFlight, access Access) error {
	ps := c.cfg.PageSize
	start := int(f.first) * ps
	buf := make([]byte, blockLen-start)
	n, err := c.backend.ReadAt(ctx, block, int64(start), buf)
	if err != nil {
		return fmt.Errorf("cache prefetch block 0x%016x from page %d: %w", block, f.first, err)
	}
	if n < len(buf) {
		return fmt.Errorf("cache prefetch block 0x%016x from page %d: %w: %d of %d bytes", block, f.first, ErrShortPage, n, len(buf))
	}
	f.buf = buf
	for off, idx := 0, f.first; off < len(buf); off, idx = off+ps, idx+1 {
		key := PageKey{Block: block, Index: idx}
		page := buf[off:min(off+ps, len(buf))]
		for _, t := range c.tiers {
			c.offer(ctx, t, key, page, access)
		}
	}
	return nil
}

// Prefetch loads pages [fromPage, end of block) of a block into the
// tiers ahead of a sequential reader, with ONE ranged backend read that
// starts at the first page memory does not hold (a whole-block GET for S3
// rather than one request per page). blockLen is the block's valid
// length. Pages already cached are not read again, but a page inside the
// range that is cached is re-offered, which costs no backend I/O. A
// prefetch of a block already in flight is not repeated.
//
// While it runs, ReadPage misses of its pages wait for it (see
// StartPrefetch) rather than read them again; a ReadPage that began
// before it may still fetch its page separately.
func (c *Cache) Prefetch(ctx context.Context, block uint64, blockLen int, fromPage uint32, access Access) error {
	run := c.StartPrefetch(block, blockLen, fromPage, access)
	if run == nil {
		return nil
	}
	return run(ctx)
}

// joinPrefetch serves a ReadPage miss from a prefetch in flight that
// covers the page: it waits for it and copies the page out. ok is false
// when no prefetch covers the page or the prefetch failed; the caller then
// reads the page itself (and reports any error). err is only ctx's.
func (c *Cache) joinPrefetch(ctx context.Context, key PageKey, length int, dst []byte) (n int, ok bool, err error) {
	c.pf.mu.Lock()
	f := c.pf.m[key.Block]
	c.pf.mu.Unlock()
	if f == nil || key.Index < f.first || key.Index >= f.end {
		return 0, false, nil
	}
	select {
	case <-f.done:
	case <-ctx.Done():
		return 0, false, fmt.Errorf("cache read block 0x%016x page %d: %w", key.Block, key.Index, ctx.Err())
	}
	if f.err != nil {
		return 0, false, nil
	}
	off := int(key.Index-f.first) * c.cfg.PageSize
	if off+length > len(f.buf) {
		// The prefetch and this reader disagree on the block length:
		// let the reader's own fetch decide.
		return 0, false, nil
	}
	return copy(dst, f.buf[off:off+length]), true, nil
}
