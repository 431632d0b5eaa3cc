// Package cache is the tiered page cache between the file system and the
// persistence store: local memory first (this issue), then local NVMe and
// neighbor nodes (later issues), then the store.
//
// A page is the unit of caching: page Index of block Block covers bytes
// [Index*PageSize, (Index+1)*PageSize) of the block. Blocks are immutable
// and block ids are never reused, so a cached page never goes stale; caches
// need eviction and garbage collection, never invalidation.
//
// # Read path
//
// Cache.ReadPage asks the tiers in order (memory, then the extra tiers
// given to New) and promotes a hit in a later tier to the earlier ones. A
// page missing everywhere is read from the Backend (the store) exactly once
// however many readers miss it together (single flight per PageKey), then
// offered to every tier. A backend that returns fewer bytes than the block
// map promised is an error (ErrShortPage), never zeros. Cache.PutBlock
// writes a new block's pages through to the tiers, Cache.DropBlock removes
// a garbage-collected block from all of them.
//
// # Memory tier
//
// The memory tier is an arena of fixed-size slots: a 64-byte header {page
// key, length, generation, CRC-32C of the page bytes} followed by PageSize
// page bytes. The arena is mmap'd lazily in 32 MiB segments up to
// Config.MemBytes (headers included) and slots are reused on eviction, so
// a large cache costs nothing at start and never exceeds its bound. The
// layout is made for one-sided reads: a later issue registers each segment
// as an RDMA memory region, and a neighbor that READs a slot checks key,
// generation and checksum, so a slot rewritten under it costs a retry,
// never wrong bytes. Local reads verify the checksum too; a mismatch drops
// the slot, counts datenlord_cache_checksum_failures_total and is a miss.
//
// A hash index maps PageKey to slot and a per-block chain of slots makes
// DropBlock cost the block's cached pages. Eviction order comes from a
// Policy over slot ids (LRU today: an intrusive list in arrays, so hits and
// inserts allocate nothing; MRU and S3-FIFO or ARC later, chosen with the
// Access hint). One mutex guards index and policy with short critical
// sections: a reader pins its slot under the lock and copies and checks
// the bytes outside it; a pinned slot is never reused.
//
// # Later tiers
//
// The NVMe tier (io_uring, O_DIRECT, persisted index) and the neighbor tier
// (rendezvous-hashed owner, RDMA READ or TCP) implement Tier and are passed
// to New as extra tiers; the cache defines the interfaces it consumes.
//
// # Metrics
//
// datenlord_cache_hits_total{tier}, datenlord_cache_misses_total{tier},
// datenlord_cache_bytes{tier}, datenlord_cache_evictions_total{tier} and
// datenlord_cache_checksum_failures_total{tier}, registered when
// Config.Registerer is set. The tier label is a Tier's Name, and
// datenlord_cache_hits_total also has tier="prefetch": the page reads a
// block prefetch's buffer served by being lent to a sequential reader
// (Cache.PinPrefetched), which no tier sees. Hits and misses count page
// reads, not bytes: a range PinPrefetched lends counts each page it
// overlaps, as a reader of that range through ReadPage would.
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
	// Name is the tier label in metrics ("memory", "disk", "neighbor";
	// "prefetch" is taken: it labels the hits of lent prefetch buffers).
	Name() string
	// Get copies the page into dst (len(dst) >= page size) and returns its
	// length; ok is false on a miss.
	Get(ctx context.Context, key PageKey, dst []byte) (n int, ok bool, err error)
	// Put offers a page to the tier; the tier may decline it. data is
	// only valid during the call (callers reuse the buffer: a prefetch's
	// block buffer is pooled): a tier that keeps the page copies it.
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
