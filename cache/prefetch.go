package cache

import (
	"context"
	"fmt"
	"sync"
)

// prefetchRetainBytes bounds the completed prefetch buffers the cache
// keeps for PinPrefetched after their pages were offered to the tiers: a
// sequential reader normally consumes a block (and so releases it) soon
// after its prefetch lands, and this only caps what readers that stall or
// skip leave behind. It exceeds a readahead window (fs keeps 8 MiB ahead
// of a reader) several times over, so that a reader keeping up never
// loses its blocks to the bound.
const prefetchRetainBytes = 32 << 20

// contains reports whether the memory tier holds page key (without
// touching the eviction policy: a prefetch check is not an access).
func (m *memoryTier) contains(key PageKey) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.index[key]
	return ok
}

// prefetchFlight is one block prefetch: a single ranged backend read of
// pages [first, end) of a block. A ReadPage that misses one of those
// pages waits for it rather than reading the page again, so a sequential
// reader that catches up with its readahead costs no extra request. Once
// it has succeeded, the flight stays listed (retained) with its buffer so
// that PinPrefetched can serve the reader straight from the buffer, until
// the reader has consumed every page or prefetchRetainBytes pushes it out.
type prefetchFlight struct {
	block      uint64
	first, end uint32
	done       chan struct{}
	// buf holds pages first..end-1 back to back, valid after done when
	// err is nil; it is never written again while anyone holds a
	// reference, so readers copy from it without further locking.
	buf  []byte
	bufp *[]byte // buf's pooled backing array
	err  error

	// Guarded by prefetchTable.mu.
	refs     int  // the table's (while retained) and the pins'
	listed   bool // in prefetchTable.m
	retained bool // done, listed and on the retained list
	// served marks the pages a pinning reader consumed (bit p: page
	// first+p); nserved counts them.
	served  []uint64
	nserved int
	// prev and next link the retained list, oldest first.
	prev, next *prefetchFlight
}

// prefetchTable maps a block to its prefetch in flight or retained (at
// most one per block). The zero value is ready for use.
type prefetchTable struct {
	mu sync.Mutex
	m  map[uint64]*prefetchFlight
	// head and tail are the oldest and newest retained flights, whose
	// buffers total retainedBytes.
	head, tail    *prefetchFlight
	retainedBytes int
	bufs          sync.Pool // *[]byte block buffers
}

// getBuf returns a buffer of n bytes from the pool (its content is
// garbage: the backend read overwrites it).
func (t *prefetchTable) getBuf(n int) *[]byte {
	if p, ok := t.bufs.Get().(*[]byte); ok && cap(*p) >= n {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n)
	return &b
}

// unrefLocked drops one reference of f (t.mu held) and recycles its buffer
// once nobody holds one and it is no longer listed.
func (t *prefetchTable) unrefLocked(f *prefetchFlight) {
	f.refs--
	if f.refs == 0 && !f.listed && f.bufp != nil {
		t.bufs.Put(f.bufp)
		f.bufp, f.buf = nil, nil
	}
}

// unlistLocked removes f from the table and the retained list (t.mu
// held), dropping the table's reference if it was retained.
func (t *prefetchTable) unlistLocked(f *prefetchFlight) {
	if !f.listed {
		return
	}
	f.listed = false
	if t.m[f.block] == f {
		delete(t.m, f.block)
	}
	if !f.retained {
		return
	}
	f.retained = false
	if f.prev != nil {
		f.prev.next = f.next
	} else {
		t.head = f.next
	}
	if f.next != nil {
		f.next.prev = f.prev
	} else {
		t.tail = f.prev
	}
	f.prev, f.next = nil, nil
	t.retainedBytes -= len(f.buf)
	t.unrefLocked(f)
}

// retainLocked appends a flight that just succeeded to the retained list
// (t.mu held) with the table's reference, pushing the oldest retained
// flights out past prefetchRetainBytes.
func (t *prefetchTable) retainLocked(f *prefetchFlight) {
	f.retained = true
	f.refs++
	f.prev = t.tail
	if t.tail != nil {
		t.tail.next = f
	} else {
		t.head = f
	}
	t.tail = f
	t.retainedBytes += len(f.buf)
	for t.retainedBytes > prefetchRetainBytes && t.head != nil && t.head != f {
		t.unlistLocked(t.head)
	}
}

// dropRetained releases the retained prefetch of block, if any (a prefetch
// still in flight finishes and is retained; its bytes are still valid:
// blocks are immutable). DropBlock calls it so that a deleted block's
// buffer does not wait for the retention bound.
func (t *prefetchTable) dropRetained(block uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if f := t.m[block]; f != nil && f.retained {
		t.unlistLocked(f)
	}
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
// block is already in flight or retained.
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
	f := &prefetchFlight{block: block, first: first, end: pages, done: make(chan struct{}), listed: true}
	c.pf.m[block] = f
	c.pf.mu.Unlock()
	return func(ctx context.Context) error {
		return c.prefetch(ctx, block, blockLen, f, access)
	}
}

// prefetch reads f's pages with one ranged backend read, offers them to
// every tier and then publishes them (retained for PinPrefetched). The
// pages are offered before the flight is done, so a reader that finds no
// flight (or a released one) finds them in the tiers, or fetches them.
func (c *Cache) prefetch(ctx context.Context, block uint64, blockLen int, f *prefetchFlight, access Access) error {
	ps := c.cfg.PageSize
	start := int(f.first) * ps
	bufp := c.pf.getBuf(blockLen - start)
	buf := *bufp
	n, err := c.backend.ReadAt(ctx, block, int64(start), buf)
	if err == nil && n < len(buf) {
		err = fmt.Errorf("%w: %d of %d bytes", ErrShortPage, n, len(buf))
	}
	if err != nil {
		c.pf.bufs.Put(bufp)
		f.err = fmt.Errorf("cache prefetch block 0x%016x from page %d: %w", block, f.first, err)
		c.pf.mu.Lock()
		c.pf.unlistLocked(f)
		c.pf.mu.Unlock()
		close(f.done)
		return f.err
	}
	for off, idx := 0, f.first; off < len(buf); off, idx = off+ps, idx+1 {
		key := PageKey{Block: block, Index: idx}
		page := buf[off:min(off+ps, len(buf))]
		for _, t := range c.tiers {
			c.offer(ctx, t, key, page, access)
		}
	}
	c.pf.mu.Lock()
	f.buf, f.bufp = buf, bufp
	if f.listed {
		c.pf.retainLocked(f)
	}
	c.pf.mu.Unlock()
	close(f.done)
	return nil
}

// Prefetch loads pages [fromPage, end of block) of a block into the
// tiers ahead of a sequential reader, with ONE ranged backend read that
// starts at the first page memory does not hold (a whole-block GET for S3
// rather than one request per page). blockLen is the block's valid
// length. Pages already cached are not read again, but a page inside the
// range that is cached is re-offered, which costs no backend I/O. A
// prefetch of the block already in flight is not repeated.
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

// waitPrefetch returns the prefetch of block that covers bytes [off,
// off+n) of the block, once it has succeeded, with a reference the caller
// must drop (c.pf.unrefLocked). f is nil when no prefetch covers the range
// or it failed; err is only ctx's.
func (c *Cache) waitPrefetch(ctx context.Context, block uint64, off, n int) (*prefetchFlight, error) {
	c.pf.mu.Lock()
	f := c.pf.m[block]
	c.pf.mu.Unlock()
	if f == nil || off < int(f.first)*c.cfg.PageSize || off+n > int(f.end)*c.cfg.PageSize {
		return nil, nil
	}
	select {
	case <-f.done:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	c.pf.mu.Lock()
	defer c.pf.mu.Unlock()
	start := int(f.first) * c.cfg.PageSize
	if f.err != nil || f.buf == nil || !f.listed || off+n > start+len(f.buf) {
		// Failed, released meanwhile, or the prefetch and this reader
		// disagree on the block length: let the reader's own fetch decide.
		return nil, nil
	}
	f.refs++
	return f, nil
}

// joinPrefetch serves a ReadPage miss from a prefetch in flight (or
// retained) that covers the page: it waits for it and copies the page
// out. ok is false when no prefetch covers the page or the prefetch
// failed; the caller then reads the page itself (and reports any error).
// err is only ctx's.
func (c *Cache) joinPrefetch(ctx context.Context, key PageKey, length int, dst []byte) (n int, ok bool, err error) {
	off := int(key.Index) * c.cfg.PageSize
	f, err := c.waitPrefetch(ctx, key.Block, off, length)
	if err != nil {
		return 0, false, fmt.Errorf("cache read block 0x%016x page %d: %w", key.Block, key.Index, err)
	}
	if f == nil {
		return 0, false, nil
	}
	rel := off - int(f.first)*c.cfg.PageSize
	n = copy(dst, f.buf[rel:rel+length])
	c.pf.mu.Lock()
	c.pf.unrefLocked(f)
	c.pf.mu.Unlock()
	return n, true, nil
}

// PinPrefetched returns bytes [off, off+n) of a block straight from the
// buffer of its prefetch, waiting for a prefetch in flight, without
// copying them or touching the tiers: a sequential reader's path. unpin
// must be called once the bytes are no longer used (the buffer is then
// recycled); the bytes must not be modified. ok is false when no
// prefetch covers the range (none was started, it failed, or it was
// released): the caller reads through ReadPage instead. err is only ctx's.
//
// The pages of the block the range reaches the end of count as consumed;
// once every page of the prefetch is consumed, the prefetch is released:
// later reads of the block go through the tiers (which were offered every
// page before the prefetch was done).
//
// Every page the range overlaps counts as one read served, as ReadPage
// counts one per page a reader asks for:
// datenlord_cache_hits_total{tier="prefetch"}. A range no prefetch covers
// is not counted (the ReadPage that follows counts it).
func (c *Cache) PinPrefetched(ctx context.Context, block uint64, off, n int) (data []byte, unpin func(), ok bool, err error) {
	if off < 0 || n <= 0 {
		return nil, nil, false, nil
	}
	f, err := c.waitPrefetch(ctx, block, off, n)
	if err != nil {
		return nil, nil, false, fmt.Errorf("cache pin block 0x%016x bytes [%d, %d): %w", block, off, off+n, err)
	}
	if f == nil {
		return nil, nil, false, nil
	}
	ps := c.cfg.PageSize
	start := int(f.first) * ps
	c.pf.mu.Lock()
	c.pf.markServedLocked(f, off-start, n, ps)
	c.pf.mu.Unlock()
	c.pfHits.Add(float64((off+n-1)/ps - off/ps + 1))
	rel := off - start
	return f.buf[rel : rel+n : rel+n], func() {
		c.pf.mu.Lock()
		c.pf.unrefLocked(f)
		c.pf.mu.Unlock()
	}, true, nil
}

// markServedLocked records that the reader consumed bytes [rel, rel+n) of
// f's buffer (t.mu held): a page counts as consumed when the range reaches
// its end. A fully consumed flight is released.
func (t *prefetchTable) markServedLocked(f *prefetchFlight, rel, n, ps int) {
	pages := int(f.end - f.first)
	if f.served == nil {
		f.served = make([]uint64, (pages+63)/64)
	}
	for p := rel / ps; p < pages; p++ {
		pageEnd := min((p+1)*ps, len(f.buf))
		if pageEnd > rel+n {
			break
		}
		if f.served[p/64]&(1<<(p%64)) == 0 {
			f.served[p/64] |= 1 << (p % 64)
			f.nserved++
		}
	}
	if f.nserved == pages {
		t.unlistLocked(f)
	}
}
