// Package gc deletes blocks that no file references any more from the
// persistence store.
//
// Blocks become unreferenced in two ways, and the collector has a pass for
// each:
//
//   - Collect: a metadata command (overwrite, truncate, purge of an unlinked
//     inode) dropped the last reference. The state machine put the block on
//     its garbage list together with the Raft index of that command. An open
//     handle may still read the block through the block map it loaded
//     before that index, so a block is deleted only once every open handle
//     on the node has loaded its block map at or after the index that freed
//     it. Then the block is deleted from the store, dropped from the caches
//     and forgotten by the metadata, in that order: a crash in between
//     leaves a block that the next pass deletes again (deleting a missing
//     block is not an error).
//   - Sweep: a node crashed after writing a block to the store but before
//     the metadata commit that would have referenced it. Nothing points to
//     such a block, so Sweep lists the store and deletes every block that no
//     inode and no garbage entry references, that was handed out by the
//     metadata (id below NextBlockID) and that no flush on this node may
//     still be committing (id below the node's lowest in-flight block).
//
// Both passes are safe to run at any time on a single node.
//
// # Several nodes
//
// With Config.Cluster set, only the metadata leader collects (a pass on
// another node does nothing), and it uses the pins of every member,
// combined (Cluster.ClusterPins: the oldest open index over all nodes and
// the union of their in-flight blocks), read at the same points of a pass
// as the local pins would be. A member that cannot be asked fails the
// pass: nothing is deleted that some node might still use, and the next
// pass retries. The leader also purges orphans (inodes unlinked while
// open) that no node has open any more: the node that closes an orphan
// last may not know it was unlinked elsewhere, or may have crashed.
package gc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/datenlord/datenlord-go/meta"
)

// Metadata is what the collector needs from the metadata service;
// *meta.Service satisfies it.
type Metadata interface {
	// Garbage lists up to limit unreferenced blocks, oldest first.
	Garbage(ctx context.Context, limit int) ([]meta.Garbage, error)
	// ForgetGarbage removes blocks from the garbage list.
	ForgetGarbage(ctx context.Context, ids []meta.BlockID) error
	// ReferencedBlocks calls fn for every referenced or listed block.
	ReferencedBlocks(ctx context.Context, fn func(meta.BlockID) error) error
	// NextBlockID is the lowest block id never handed out.
	NextBlockID(ctx context.Context) (meta.BlockID, error)
	// AppliedIndex is the index of the last command applied locally.
	AppliedIndex() uint64
}

// Store is the persistence store as the collector uses it; store.Store
// satisfies it.
type Store interface {
	// Delete removes a block; a missing block is not an error.
	Delete(ctx context.Context, id uint64) error
	// List calls fn for every block id in the store.
	List(ctx context.Context, fn func(id uint64) error) error
}

// Cache drops the cached pages of deleted blocks; *cache.Cache satisfies
// it.
type Cache interface {
	// DropBlock removes every page of a block from every tier.
	DropBlock(ctx context.Context, block uint64)
}

// Pins tells the collector which blocks readers and writers on this node
// may still use. The file system (*fs.FS) implements it.
//
// With several nodes, the leader must combine the pins of every node (the
// minimum over all of them) before deleting; a node that cannot be asked
// blocks collection.
type Pins interface {
	// OldestOpenIndex returns the smallest metadata index at which a
	// currently open file loaded its block map, and false when no file is
	// open. Garbage freed after that index may still be read.
	OldestOpenIndex() (uint64, bool)
	// InFlightBlocks calls fn for every block id handed to a flush (so
	// perhaps already in the store) whose commit has not finished.
	InFlightBlocks(fn func(meta.BlockID))
}

// Cluster is the metadata service of a multi-node cluster as the
// collector uses it; *meta.Service satisfies it.
type Cluster interface {
	// IsLeader reports whether this node leads the metadata cluster.
	IsLeader() bool
	// ClusterPins combines the pins of every member; it fails if one
	// cannot be asked.
	ClusterPins(ctx context.Context) (meta.NodePins, error)
	// Orphans lists unlinked inodes not yet purged.
	Orphans(ctx context.Context) ([]meta.Ino, error)
	// Purge purges an orphan unless some node has it open.
	Purge(ctx context.Context, ino meta.Ino) error
}

// Config tunes the collector.
type Config struct {
	// Cluster, if set, makes the collector cluster-aware: only the
	// leader collects, with every node's pins (see the package doc).
	Cluster Cluster
	// Interval between background passes of Collect (0: 30s).
	Interval time.Duration
	// SweepEvery runs Sweep on every n-th background pass (0: 20; the
	// first pass always sweeps, to clean up after a crash).
	SweepEvery int
	// Batch is how many garbage entries one Collect step handles (0: 512).
	Batch int
	// Registerer receives the collector's metrics (nil: none).
	Registerer prometheus.Registerer
	// Logger receives structured logs (nil: slog.Default()).
	Logger *slog.Logger
}

// Stats reports what a pass did.
type Stats struct {
	// Deleted is how many blocks were deleted from the store.
	Deleted int
	// Deferred is how many garbage blocks were kept because an open file
	// may still read them.
	Deferred int
}

// Collector deletes unreferenced blocks. Its methods are safe for
// concurrent use, but passes are serialized.
type Collector struct {
	cfg   Config
	md    Metadata
	st    Store
	cache Cache
	pins  Pins
	log   *slog.Logger
	// pass serializes passes: a token is taken for the length of a pass.
	pass chan struct{}

	deleted prometheus.Counter
	errs    prometheus.Counter
}

// New returns a collector. cache may be nil.
func New(cfg Config, md Metadata, st Store, cache Cache, pins Pins) (*Collector, error) {
	if cfg.Interval <= 0 {
		cfg.Interval = 30 * time.Second
	}
	if cfg.SweepEvery <= 0 {
		cfg.SweepEvery = 20
	}
	if cfg.Batch <= 0 {
		cfg.Batch = 512
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	c := &Collector{
		cfg: cfg, md: md, st: st, cache: cache, pins: pins,
		log:  log.With("component", "gc"),
		pass: make(chan struct{}, 1),
		deleted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "datenlord_gc_deleted_blocks_total",
			Help: "Blocks deleted from the persistence store by the garbage collector.",
		}),
		errs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "datenlord_gc_errors_total",
			Help: "Garbage collection passes that ended with an error.",
		}),
	}
	if cfg.Registerer != nil {
		for _, m := range []prometheus.Collector{c.deleted, c.errs} {
			if err := cfg.Registerer.Register(m); err != nil {
				return nil, fmt.Errorf("gc: register metrics: %w", err)
			}
		}
	}
	return c, nil
}

// Run collects every Config.Interval until ctx ends, sweeping on the first
// pass and every SweepEvery passes after it. Errors are logged; the next
// pass retries.
func (c *Collector) Run(ctx context.Context) {
	t := time.NewTicker(c.cfg.Interval)
	defer t.Stop()
	for n := 0; ; n++ {
		var err error
		if n%c.cfg.SweepEvery == 0 {
			_, err = c.Sweep(ctx)
		} else {
			_, err = c.Collect(ctx)
		}
		if err == nil {
			_, err = c.PurgeOrphans(ctx)
		}
		if err != nil && ctx.Err() == nil {
			c.errs.Inc()
			c.log.Warn("garbage collection pass failed; retrying later", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *Collector) lock(ctx context.Context) error {
	select {
	case c.pass <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("gc: wait for running pass: %w", ctx.Err())
	}
}

func (c *Collector) unlock() { <-c.pass }

// Collect deletes the garbage-listed blocks that no open file can still
// read.
func (c *Collector) Collect(ctx context.Context) (Stats, error) {
	if err := c.lock(ctx); err != nil {
		return Stats{}, err
	}
	defer c.unlock()
	if !c.leads() {
		return Stats{}, nil
	}
	return c.collect(ctx)
}

// leads reports whether this node should collect: always on a single
// node, only on the leader of a cluster.
func (c *Collector) leads() bool { return c.cfg.Cluster == nil || c.cfg.Cluster.IsLeader() }

// currentPins returns the pins to respect now: this node's, or in a
// cluster every node's combined.
func (c *Collector) currentPins(ctx context.Context) (Pins, error) {
	if c.cfg.Cluster == nil {
		return c.pins, nil
	}
	np, err := c.cfg.Cluster.ClusterPins(ctx)
	if err != nil {
		return nil, fmt.Errorf("gc: pins of the cluster (pass skipped): %w", err)
	}
	return staticPins(np), nil
}

// staticPins are pins read once from the cluster.
type staticPins meta.NodePins

func (p staticPins) OldestOpenIndex() (uint64, bool) { return p.OldestOpen, p.HasOpen }

func (p staticPins) InFlightBlocks(fn func(meta.BlockID)) {
	for _, id := range p.InFlight {
		fn(id)
	}
}

// PurgeOrphans purges the orphans that no node has open (a cluster's
// leader only; a no-op without Config.Cluster, where the file system
// purges on the last release and at mount). It returns how many orphans
// it looked at.
func (c *Collector) PurgeOrphans(ctx context.Context) (int, error) {
	if c.cfg.Cluster == nil || !c.cfg.Cluster.IsLeader() {
		return 0, nil
	}
	orphans, err := c.cfg.Cluster.Orphans(ctx)
	if err != nil {
		return 0, fmt.Errorf("gc: list orphans: %w", err)
	}
	for _, ino := range orphans {
		if err := c.cfg.Cluster.Purge(ctx, ino); err != nil {
			return 0, fmt.Errorf("gc: purge orphan %d: %w", ino, err)
		}
	}
	return len(orphans), nil
}

func (c *Collector) collect(ctx context.Context) (Stats, error) {
	var st Stats
	for {
		// Read the applied index before the pins: a file opened after this
		// point loads a block map at or after it, which holds no block freed
		// at or before it.
		bound := c.md.AppliedIndex()
		pins, err := c.currentPins(ctx)
		if err != nil {
			return st, err
		}
		if pin, ok := pins.OldestOpenIndex(); ok && pin < bound {
			bound = pin
		}
		list, err := c.md.Garbage(ctx, c.cfg.Batch)
		if err != nil {
			return st, fmt.Errorf("gc: list garbage: %w", err)
		}
		var done []meta.BlockID
		for _, g := range list {
			if g.FreedAt > bound {
				st.Deferred++
				continue
			}
			if err := c.delete(ctx, g.ID); err != nil {
				return st, err
			}
			done = append(done, g.ID)
		}
		if len(done) > 0 {
			if err := c.md.ForgetGarbage(ctx, done); err != nil {
				return st, fmt.Errorf("gc: forget %d deleted blocks: %w", len(done), err)
			}
			st.Deleted += len(done)
		}
		// A short page means the list is exhausted; a page with nothing
		// deletable means the rest is pinned too (the list is oldest first).
		if len(list) < c.cfg.Batch || len(done) == 0 {
			return st, nil
		}
	}
}

func (c *Collector) delete(ctx context.Context, id meta.BlockID) error {
	if err := c.st.Delete(ctx, uint64(id)); err != nil {
		return fmt.Errorf("gc: delete block %d: %w", id, err)
	}
	if c.cache != nil {
		c.cache.DropBlock(ctx, uint64(id))
	}
	c.deleted.Inc()
	return nil
}

// errStop ends a store listing early when ctx is done.
var errStop = errors.New("stop")

// Sweep runs Collect, then deletes every block in the store that nothing
// references and that no flush may still commit (blocks leaked by a crash
// between writing a block and committing it).
func (c *Collector) Sweep(ctx context.Context) (Stats, error) {
	if err := c.lock(ctx); err != nil {
		return Stats{}, err
	}
	defer c.unlock()
	if !c.leads() {
		return Stats{}, nil
	}
	st, err := c.collect(ctx)
	if err != nil {
		return st, err
	}
	// Order matters. Every block in the listing was handed to a flush
	// before the listing; by the time the in-flight set is read, that
	// flush has either committed (so the reference set read after it holds
	// the block), been abandoned (the block is leaked), or is still in
	// flight (the block is skipped). Blocks at or above NextBlockID were
	// never handed out by this namespace and are left alone.
	limit, err := c.md.NextBlockID(ctx)
	if err != nil {
		return st, fmt.Errorf("gc: next block id: %w", err)
	}
	var candidates []uint64
	if err := c.st.List(ctx, func(id uint64) error {
		if ctx.Err() != nil {
			return errStop
		}
		if meta.BlockID(id) < limit {
			candidates = append(candidates, id)
		}
		return nil
	}); err != nil {
		if errors.Is(err, errStop) {
			return st, fmt.Errorf("gc: list store: %w", ctx.Err())
		}
		return st, fmt.Errorf("gc: list store: %w", err)
	}
	keep := make(map[meta.BlockID]struct{})
	pins, err := c.currentPins(ctx)
	if err != nil {
		return st, err
	}
	pins.InFlightBlocks(func(id meta.BlockID) { keep[id] = struct{}{} })
	if err := c.md.ReferencedBlocks(ctx, func(id meta.BlockID) error {
		keep[id] = struct{}{}
		return nil
	}); err != nil {
		return st, fmt.Errorf("gc: list referenced blocks: %w", err)
	}
	var leaked []uint64
	for _, id := range candidates {
		if _, ok := keep[meta.BlockID(id)]; !ok {
			leaked = append(leaked, id)
		}
	}
	for _, id := range leaked {
		if err := c.delete(ctx, meta.BlockID(id)); err != nil {
			return st, err
		}
		st.Deleted++
	}
	if len(leaked) > 0 {
		c.log.Info("swept leaked blocks", "count", len(leaked))
	}
	return st, nil
}
