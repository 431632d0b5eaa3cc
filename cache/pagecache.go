package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrShortPage is returned (wrapped) when the backend holds fewer bytes for
// a page than the caller's length: the block map and the store disagree,
// and zeros must not be passed off as data.
var ErrShortPage = errors.New("backend returned a short page")

// Config configures a Cache.
type Config struct {
	// PageSize is the page size in bytes, a multiple of 4096.
	PageSize int
	// MemBytes bounds the memory tier (page bytes plus headers).
	MemBytes int64
	// Registerer receives the cache metrics (nil: none are registered).
	Registerer prometheus.Registerer
	// Logger receives structured logs (nil: slog.Default()).
	Logger *slog.Logger
	// MemoryPolicy returns the memory tier's eviction policy (nil: LRU).
	MemoryPolicy func() Policy
}

// Cache reads pages through the tiers, fetching misses from the backend
// once (single flight) and offering them to the tiers.
type Cache struct {
	cfg     Config
	log     *slog.Logger
	backend Backend
	memory  *memoryTier
	tiers   []Tier        // memory first, then the extra tiers in order
	tierM   []tierMetrics // parallel to tiers
	bufs    sync.Pool     // *[]byte of PageSize, for backend reads

	flightMu sync.Mutex
	flights  map[PageKey]*flight

	pf prefetchTable // block prefetches in flight (prefetch.go)
	// pfHits counts the page reads PinPrefetched serves:
	// datenlord_cache_hits_total{tier="prefetch"}.
	pfHits prometheus.Counter
}

// flight is one backend fetch that concurrent misses of a page share.
type flight struct {
	done chan struct{}
	buf  *[]byte // from Cache.bufs; valid after done
	n    int
	err  error
	refs atomic.Int32 // leader and followers still reading buf
}

// New returns a cache with a memory tier of cfg.MemBytes in front of
// backend; extra tiers are consulted after memory, in order.
func New(cfg Config, backend Backend, extra ...Tier) (*Cache, error) {
	if cfg.PageSize <= 0 || cfg.PageSize%4096 != 0 {
		return nil, fmt.Errorf("cache: page size %d is not a positive multiple of 4096", cfg.PageSize)
	}
	if cfg.MemBytes < 0 {
		return nil, fmt.Errorf("cache: negative memory bound %d", cfg.MemBytes)
	}
	if backend == nil {
		return nil, errors.New("cache: nil backend")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("cache: register metrics: %w", err)
	}
	var policy Policy = NewLRU()
	if cfg.MemoryPolicy != nil {
		policy = cfg.MemoryPolicy()
	}
	c := &Cache{
		cfg:     cfg,
		log:     log,
		backend: backend,
		flights: make(map[PageKey]*flight),
	}
	pageSize := cfg.PageSize
	c.bufs.New = func() any { b := make([]byte, pageSize); return &b }
	c.memory = newMemoryTier(cfg.PageSize, cfg.MemBytes, defaultSegmentBytes, policy, m.forTier("memory"), log)
	c.tiers = append([]Tier{c.memory}, extra...)
	for _, t := range c.tiers {
		c.tierM = append(c.tierM, m.forTier(t.Name()))
	}
	c.pfHits = m.hits.WithLabelValues(prefetchTier)
	return c, nil
}

// PageSize returns the page size.
func (c *Cache) PageSize() int { return c.cfg.PageSize }

// ReadPage copies page key into dst and returns its length. length is the
// number of valid bytes the page holds (the block's length past the page
// start, capped at the page size): it is what a miss reads from the backend.
//
// A hit in a later tier is promoted to the earlier ones. A miss everywhere
// reads exactly [Index*PageSize, Index*PageSize+length) from the backend,
// once however many readers miss at the same time, and offers the page to
// every tier. A tier's error is logged and counts as a miss; a backend
// error or short read is returned.
func (c *Cache) ReadPage(ctx context.Context, key PageKey, length int, dst []byte, access Access) (int, error) {
	if length <= 0 || length > c.cfg.PageSize {
		return 0, fmt.Errorf("cache read block 0x%016x page %d: length %d outside 1..%d", key.Block, key.Index, length, c.cfg.PageSize)
	}
	if len(dst) < length {
		return 0, fmt.Errorf("cache read block 0x%016x page %d: buffer of %d bytes, need %d", key.Block, key.Index, len(dst), length)
	}
	for i, t := range c.tiers {
		n, ok, err := getPage(ctx, t, key, length, dst, access) // neighbor.go: length-aware tiers
		if err != nil {
			c.log.Warn("cache tier read failed; treating as a miss", "tier", t.Name(), "block", key.Block, "page", key.Index, "err", err)
		}
		if ok && n == length {
			c.tierM[i].hits.Inc()
			if _, remote := t.(*NeighborTier); remote && access == AccessSequential {
				// A scan's page another node owns is not copied here: the
				// cluster keeps one copy per page (at its owner), and a
				// scan duplicating every page it reads would evict the
				// pages this node owns for the others.
				return n, nil
			}
			for _, upper := range c.tiers[:i] {
				c.offer(ctx, upper, key, dst[:n], access)
			}
			return n, nil
		}
		c.tierM[i].misses.Inc()
	}
	if n, ok, err := c.joinPrefetch(ctx, key, length, dst); ok || err != nil {
		return n, err
	}
	return c.fetchShared(ctx, key, length, dst, access)
}

// fetchShared reads a page from the backend, joining a fetch of the same
// page already in flight.
func (c *Cache) fetchShared(ctx context.Context, key PageKey, length int, dst []byte, access Access) (int, error) {
	for {
		c.flightMu.Lock()
		if f := c.flights[key]; f != nil {
			f.refs.Add(1)
			c.flightMu.Unlock()
			select {
			case <-f.done:
			case <-ctx.Done():
				c.release(f)
				return 0, fmt.Errorf("cache read block 0x%016x page %d: %w", key.Block, key.Index, ctx.Err())
			}
			if f.err != nil {
				err := f.err
				c.release(f)
				if isContextErr(err) && ctx.Err() == nil {
					continue // the leader's caller gave up, not us: fetch again
				}
				return 0, err
			}
			if f.n != length {
				c.release(f)
				return 0, fmt.Errorf("cache read block 0x%016x page %d: concurrent readers disagree on the page length (%d, %d)", key.Block, key.Index, f.n, length)
			}
			n := copy(dst, (*f.buf)[:f.n])
			c.release(f)
			return n, nil
		}
		f := &flight{done: make(chan struct{})}
		f.refs.Store(1)
		c.flights[key] = f
		c.flightMu.Unlock()

		f.buf = c.bufs.Get().(*[]byte)
		f.n, f.err = c.fetch(ctx, key, length, (*f.buf)[:length], access)
		c.flightMu.Lock()
		delete(c.flights, key)
		c.flightMu.Unlock()
		close(f.done)
		if f.err != nil {
			c.release(f)
			return 0, f.err
		}
		n := copy(dst, (*f.buf)[:f.n])
		c.release(f)
		return n, nil
	}
}

// fetch fills buf (len(buf) == length) for a flight leader: from memory if
// an earlier flight just put the page there, else from the backend, and
// then offers the page to every tier.
func (c *Cache) fetch(ctx context.Context, key PageKey, length int, buf []byte, access Access) (int, error) {
	if n, ok, _ := c.memory.Get(ctx, key, buf); ok && n == length {
		return n, nil
	}
	off := int64(key.Index) * int64(c.cfg.PageSize)
	n, err := c.backend.ReadAt(ctx, key.Block, off, buf)
	if err != nil {
		return 0, fmt.Errorf("cache read block 0x%016x page %d: backend read of %d bytes at %d: %w", key.Block, key.Index, length, off, err)
	}
	if n < length {
		return 0, fmt.Errorf("cache read block 0x%016x page %d: %w: %d of %d bytes at %d (block map and store disagree)", key.Block, key.Index, ErrShortPage, n, length, off)
	}
	for _, t := range c.tiers {
		c.offer(ctx, t, key, buf[:n], access)
	}
	return n, nil
}

func (c *Cache) release(f *flight) {
	if f.refs.Add(-1) == 0 {
		c.bufs.Put(f.buf)
	}
}

// offer puts a page into a tier, logging (not returning) a failure: a page
// a tier declines is only a later miss.
func (c *Cache) offer(ctx context.Context, t Tier, key PageKey, data []byte, access Access) {
	if err := t.Put(ctx, key, data, access); err != nil {
		c.log.Warn("cache tier put failed", "tier", t.Name(), "block", key.Block, "page", key.Index, "err", err)
	}
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// PutBlock inserts the pages of a newly written block (write-through), so
// that reading back what was just written does not go to the store. Every
// tier is offered every page; tiers decide admission. Unlike the read-miss
// path, the write path waits for room in a tier's write queue (the disk
// tier's, the neighbor tier's offers) instead of having the page dropped:
// writers are throttled to the cache device's speed, and what was written
// stays cached across a restart.
//
// In a cluster the memory tier keeps only the pages this node owns: the
// others go to their owners (the neighbor tier), and a writer that kept
// every page it wrote would evict the pages it owns for the cluster.
func (c *Cache) PutBlock(ctx context.Context, block uint64, data []byte, access Access) {
	ps := c.cfg.PageSize
	nb := c.neighbor()
	for off, idx := 0, uint32(0); off < len(data); off, idx = off+ps, idx+1 {
		page := data[off:min(off+ps, len(data))]
		key := PageKey{Block: block, Index: idx}
		owned := nb == nil || nb.OwnedHere(key)
		for _, t := range c.tiers {
			if !owned && t == Tier(c.memory) {
				continue
			}
			c.offerWait(ctx, t, key, page, access) // tier_hints.go
		}
	}
}

// neighbor returns the cache's neighbor tier, or nil.
func (c *Cache) neighbor() *NeighborTier {
	for _, t := range c.tiers {
		if nb, ok := t.(*NeighborTier); ok {
			return nb
		}
	}
	return nil
}

// DropBlock removes every page of a block from every tier. The memory tier
// keeps a chain of each block's slots, so this costs the block's cached
// pages, not a scan. A fetch of the block still in flight may re-insert a
// page afterwards; that page is still valid (blocks are immutable) and
// ages out like any other.
func (c *Cache) DropBlock(ctx context.Context, block uint64) {
	c.pf.dropRetained(block)
	for _, t := range c.tiers {
		t.DropBlock(ctx, block)
	}
}

// Close closes every tier.
func (c *Cache) Close() error {
	var errs []error
	for _, t := range c.tiers {
		if err := t.Close(); err != nil {
			errs = append(errs, fmt.Errorf("cache close tier %s: %w", t.Name(), err))
		}
	}
	return errors.Join(errs...)
}
