package cache

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
)

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
}

// Cache reads pages through the tiers, fetching misses from the backend
// once (single flight) and offering them to the tiers.
type Cache struct {
	cfg Config
}

// New returns a cache with a memory tier of cfg.MemBytes in front of
// backend; extra tiers are consulted after memory, in order.
func New(cfg Config, backend Backend, extra ...Tier) (*Cache, error) {
	panic("not implemented")
}

// PageSize returns the page size.
func (c *Cache) PageSize() int { return c.cfg.PageSize }

// ReadPage copies page key into dst and returns its length. length is the
// number of valid bytes the page holds (the block's length past the page
// start, capped at the page size): it is what a miss reads from the backend.
func (c *Cache) ReadPage(ctx context.Context, key PageKey, length int, dst []byte, access Access) (int, error) {
	panic("not implemented")
}

// PutBlock inserts the pages of a newly written block (write-through), so
// that reading back what was just written does not go to the store.
func (c *Cache) PutBlock(ctx context.Context, block uint64, data []byte, access Access) {
	panic("not implemented")
}

// DropBlock removes every page of a block from every tier.
func (c *Cache) DropBlock(ctx context.Context, block uint64) { panic("not implemented") }

// Close closes every tier.
func (c *Cache) Close() error { panic("not implemented") }
