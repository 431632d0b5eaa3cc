// Package cache is the tiered page cache between the file system and the
// persistence store: local memory first (this issue), then local NVMe and
// neighbor nodes (later issues), then the store.
//
// A page is the unit of caching: page Index of block Block covers bytes
// [Index*PageSize, (Index+1)*PageSize) of the block. Blocks are immutable
// and block ids are never reused, so a cached page never goes stale; caches
// need eviction and garbage collection, never invalidation.
package cache

import (
	"context"
)

// PageKey names one page.
type PageKey struct {
	Block uint64
	Index uint32
}

// Access describes how a page is being read, so that tiers can choose
// admission and eviction (scans must not flush the random working set).
type Access uint8

// Access patterns.
const (
	AccessRandom Access = iota
	AccessSequential
)

// Tier is one level of the cache hierarchy. Implementations are safe for
// concurrent use.
type Tier interface {
	// Name is the tier label in metrics ("memory", "disk", "neighbor").
	Name() string
	// Get copies the page into dst (len(dst) >= page size) and returns its
	// length; ok is false on a miss.
	Get(ctx context.Context, key PageKey, dst []byte) (n int, ok bool, err error)
	// Put offers a page to the tier; the tier may decline it.
	Put(ctx context.Context, key PageKey, data []byte, access Access) error
	// DropBlock removes every page of a block (after garbage collection).
	DropBlock(ctx context.Context, block uint64)
	// Close releases the tier's resources.
	Close() error
}

// Backend is the persistence store as the cache sees it: ranged reads of
// blocks. store.Store satisfies it.
type Backend interface {
	ReadAt(ctx context.Context, id uint64, off int64, dst []byte) (int, error)
}
