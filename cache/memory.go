package cache

import (
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Slot layout in the arena. The header sits in front of the page bytes so
// that one remote READ of a slot fetches both; it is little endian:
//
//	 0  block id      uint64
//	 8  page index    uint32
//	12  length        uint32  valid page bytes (0: slot empty or being written)
//	16  generation    uint64  bumped every time the slot is (re)filled
//	24  checksum      uint32  CRC-32C of the length page bytes
//	28  reserved      to slotHeaderSize
//
// A reader (local, or a neighbor with a one-sided RDMA READ) trusts a slot
// only if key, generation and checksum all match what it expects: a slot
// being rewritten under it costs a retry, never wrong bytes.
const (
	slotHeaderSize = 64
	hdrBlock       = 0
	hdrIndex       = 8
	hdrLength      = 12
	hdrGeneration  = 16
	hdrChecksum    = 24

	// defaultSegmentBytes is the arena allocation unit: the arena grows a
	// segment at a time up to the memory bound, never all at start.
	defaultSegmentBytes = 32 << 20
)

// Slot states, guarded by memoryTier.mu.
const (
	slotFree    uint8 = iota // on the free list
	slotFilling              // being written by Put, in no index
	slotValid                // in the index and the policy
	slotZombie               // dropped while pinned: reused once unpinned
)

// segment is one mmap'd piece of the arena. Anonymous mmap keeps the pages
// out of the Go heap (no GC scanning, stable addresses) so that a later
// issue can register each segment as an RDMA memory region as is.
type segment struct {
	mem []byte
	// refs pins slots: a pinned slot is being copied from or written to
	// outside the tier lock and must not be reused. Pins are taken under
	// the tier lock and dropped with a plain atomic decrement.
	refs []atomic.Int32
}

// memoryTier is the local memory tier: an arena of fixed-size slots, a hash
// index from page key to slot, a per-block chain of slots (for DropBlock)
// and a pluggable eviction Policy.
type memoryTier struct {
	pageSize    int
	stride      int   // slotHeaderSize + pageSize
	maxSlots    int32 // bound: maxSlots*stride <= MemBytes
	slotsPerSeg int32
	segBytes    int
	crc         *crc32.Table
	log         *slog.Logger
	m           tierMetrics

	mu      sync.Mutex
	closed  bool
	segs    []*segment // fixed length; entries set once, lazily
	nslots  int32      // slots backed by allocated segments
	free    []int32
	zombies []int32
	index   map[PageKey]int32
	keys    []PageKey
	lens    []int32
	gens    []uint64
	state   []uint8
	chains  blockChains
	policy  Policy
	bytes   int64
}

var _ Tier = (*memoryTier)(nil)

func newMemoryTier(pageSize int, memBytes int64, segBytes int, policy Policy, m tierMetrics, log *slog.Logger) *memoryTier {
	stride := slotHeaderSize + pageSize
	maxSlots := int32(min(memBytes/int64(stride), 1<<31-1))
	perSeg := int32(max(1, segBytes/stride))
	nsegs := 0
	if maxSlots > 0 {
		nsegs = int((maxSlots + perSeg - 1) / perSeg)
	}
	return &memoryTier{
		pageSize:    pageSize,
		stride:      stride,
		maxSlots:    maxSlots,
		slotsPerSeg: perSeg,
		segBytes:    int(perSeg) * stride,
		crc:         crc32.MakeTable(crc32.Castagnoli),
		log:         log,
		m:           m,
		segs:        make([]*segment, nsegs),
		index:       make(map[PageKey]int32),
		chains:      newBlockChains(0),
		policy:      policy,
	}
}

// Name returns "memory".
func (t *memoryTier) Name() string { return "memory" }

// slotLoc returns the segment and byte offset of slot s; t.mu must be held
// (the segment pointer is then stable for the caller's lifetime of a pin).
func (t *memoryTier) slotLoc(s int32) (*segment, int32, int) {
	seg := t.segs[s/t.slotsPerSeg]
	i := s % t.slotsPerSeg
	return seg, i, int(i) * t.stride
}

// Get copies a page out of its slot. The slot is pinned under the lock and
// the copy and checksum run outside it; a checksum mismatch drops the slot
// and reports a miss.
func (t *memoryTier) Get(_ context.Context, key PageKey, dst []byte) (int, bool, error) {
	t.mu.Lock()
	s, ok := t.index[key]
	if !ok || t.closed {
		t.mu.Unlock()
		return 0, false, nil
	}
	seg, i, off := t.slotLoc(s)
	n := int(t.lens[s])
	if len(dst) < n {
		t.mu.Unlock()
		return 0, false, fmt.Errorf("cache memory get block 0x%016x page %d: buffer of %d bytes for a %d-byte page", key.Block, key.Index, len(dst), n)
	}
	seg.refs[i].Add(1)
	t.policy.Touch(s, AccessRandom)
	gen := t.gens[s]
	t.mu.Unlock()

	hdr := seg.mem[off : off+slotHeaderSize]
	copy(dst[:n], seg.mem[off+slotHeaderSize:off+slotHeaderSize+n])
	good := binary.LittleEndian.Uint64(hdr[hdrBlock:]) == key.Block &&
		binary.LittleEndian.Uint32(hdr[hdrIndex:]) == key.Index &&
		binary.LittleEndian.Uint32(hdr[hdrLength:]) == uint32(n) &&
		binary.LittleEndian.Uint64(hdr[hdrGeneration:]) == gen &&
		binary.LittleEndian.Uint32(hdr[hdrChecksum:]) == crc32.Checksum(dst[:n], t.crc)
	seg.refs[i].Add(-1)
	if !good {
		t.dropCorrupt(key, s, gen)
		return 0, false, nil
	}
	return n, true, nil
}

// dropCorrupt removes slot s if it still holds key at generation gen.
func (t *memoryTier) dropCorrupt(key PageKey, s int32, gen uint64) {
	t.m.checksumFailures.Inc()
	t.mu.Lock()
	defer t.mu.Unlock()
	if cur, ok := t.index[key]; !ok || cur != s || t.gens[s] != gen {
		return // already replaced
	}
	t.log.Warn("cache page failed its checksum; dropped", "tier", "memory", "block", key.Block, "page", key.Index, "slot", s)
	t.removeLocked(s)
	t.releaseLocked(s)
}

// Put copies a page into a slot: a free one, a new one (growing the arena
// by a segment when needed, up to the bound) or the policy's victim. It
// declines (returning nil) when every candidate is pinned or the arena
// cannot grow. A page already present is only touched.
func (t *memoryTier) Put(_ context.Context, key PageKey, data []byte, access Access) error {
	if len(data) == 0 || len(data) > t.pageSize {
		return fmt.Errorf("cache memory put block 0x%016x page %d: %d bytes, want 1..%d", key.Block, key.Index, len(data), t.pageSize)
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	if s, ok := t.index[key]; ok {
		t.policy.Touch(s, access)
		t.mu.Unlock()
		return nil
	}
	s, ok := t.allocLocked()
	if !ok {
		t.mu.Unlock()
		return nil
	}
	t.state[s] = slotFilling
	t.gens[s]++
	gen := t.gens[s]
	seg, i, off := t.slotLoc(s)
	seg.refs[i].Add(1)
	t.mu.Unlock()

	// Fill outside the lock. The header is invalidated first (length 0,
	// new generation) so a remote reader never pairs the old header with
	// new bytes.
	hdr := seg.mem[off : off+slotHeaderSize]
	binary.LittleEndian.PutUint32(hdr[hdrLength:], 0)
	binary.LittleEndian.PutUint64(hdr[hdrGeneration:], gen)
	copy(seg.mem[off+slotHeaderSize:], data)
	binary.LittleEndian.PutUint64(hdr[hdrBlock:], key.Block)
	binary.LittleEndian.PutUint32(hdr[hdrIndex:], key.Index)
	binary.LittleEndian.PutUint32(hdr[hdrChecksum:], crc32.Checksum(data, t.crc))
	binary.LittleEndian.PutUint32(hdr[hdrLength:], uint32(len(data)))
	seg.refs[i].Add(-1)

	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	if _, dup := t.index[key]; dup { // a concurrent Put of the same page won
		t.releaseLocked(s)
		return nil
	}
	t.index[key] = s
	t.keys[s] = key
	t.lens[s] = int32(len(data))
	t.state[s] = slotValid
	t.chains.link(s, key.Block)
	if kp, ok := t.policy.(KeyedPolicy); ok { // ghost-keeping policies need the page key
		kp.InsertKey(s, key, access)
	} else {
		t.policy.Insert(s, access)
	}
	t.bytes += int64(len(data))
	t.m.bytes.Set(float64(t.bytes))
	return nil
}

// allocLocked returns a slot to fill: a free or unpinned zombie slot, a
// slot of a new segment, or an evicted victim.
func (t *memoryTier) allocLocked() (int32, bool) {
	if n := len(t.free); n > 0 {
		s := t.free[n-1]
		t.free = t.free[:n-1]
		return s, true
	}
	for j, s := range t.zombies {
		if seg, i, _ := t.slotLoc(s); seg.refs[i].Load() == 0 {
			t.zombies[j] = t.zombies[len(t.zombies)-1]
			t.zombies = t.zombies[:len(t.zombies)-1]
			return s, true
		}
	}
	if t.nslots < t.maxSlots {
		if err := t.growLocked(); err != nil {
			t.log.Warn("cache memory arena cannot grow; evicting instead", "err", err)
		} else {
			return t.allocLocked()
		}
	}
	for tries := int32(0); tries < t.nslots; tries++ {
		v, ok := t.policy.Victim()
		if !ok {
			break
		}
		if seg, i, _ := t.slotLoc(v); seg.refs[i].Load() > 0 {
			t.policy.Touch(v, AccessRandom) // being read right now: recently used anyway
			continue
		}
		t.removeLocked(v)
		t.m.evictions.Inc()
		return v, true
	}
	return noSlot, false
}

// growLocked maps the next arena segment and puts its slots on the free
// list.
func (t *memoryTier) growLocked() error {
	segIdx := t.nslots / t.slotsPerSeg
	n := min(t.slotsPerSeg, t.maxSlots-t.nslots)
	mem, err := unix.Mmap(-1, 0, int(n)*t.stride, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("mmap %d-byte arena segment: %w", int(n)*t.stride, err)
	}
	t.segs[segIdx] = &segment{mem: mem, refs: make([]atomic.Int32, n)}
	first := t.nslots
	t.nslots += n
	for s := t.nslots - 1; s >= first; s-- { // lowest slot on top
		t.free = append(t.free, s)
	}
	total := int(t.nslots)
	t.keys = append(t.keys, make([]PageKey, n)...)
	t.lens = append(t.lens, make([]int32, n)...)
	t.gens = append(t.gens, make([]uint64, n)...)
	t.state = append(t.state, make([]uint8, n)...)
	t.chains.grow(int(n))
	t.policy.Grow(total)
	return nil
}

// removeLocked takes a valid slot out of the index, its block chain and
// the policy; the caller then reuses or releases it.
func (t *memoryTier) removeLocked(s int32) {
	key := t.keys[s]
	delete(t.index, key)
	t.chains.unlink(s, key.Block)
	t.policy.Remove(s)
	t.bytes -= int64(t.lens[s])
	t.m.bytes.Set(float64(t.bytes))
	t.lens[s] = 0
	t.state[s] = slotFilling
}

// releaseLocked returns a removed slot to the free list, or parks it as a
// zombie while a reader still has it pinned.
func (t *memoryTier) releaseLocked(s int32) {
	seg, i, off := t.slotLoc(s)
	if seg.refs[i].Load() > 0 {
		t.state[s] = slotZombie
		t.zombies = append(t.zombies, s)
		return
	}
	binary.LittleEndian.PutUint32(seg.mem[off+hdrLength:], 0)
	t.state[s] = slotFree
	t.free = append(t.free, s)
}

// DropBlock frees every slot of the block by walking its chain.
func (t *memoryTier) DropBlock(_ context.Context, block uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.chains.each(block, func(s int32) {
		t.removeLocked(s)
		t.releaseLocked(s)
	})
}

// Close drops every page, waits for in-flight copies and unmaps the arena.
func (t *memoryTier) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	clear(t.index)
	t.chains.reset()
	t.bytes = 0
	t.m.bytes.Set(0)
	segs := t.segs
	t.mu.Unlock()
	for _, seg := range segs {
		if seg == nil {
			continue
		}
		for i := range seg.refs {
			for seg.refs[i].Load() > 0 {
				time.Sleep(100 * time.Microsecond)
			}
		}
	}
	var firstErr error
	for _, seg := range segs {
		if seg == nil {
			continue
		}
		if err := unix.Munmap(seg.mem); err != nil && firstErr == nil {
			firstErr = fmt.Errorf("cache memory close: munmap: %w", err)
		}
	}
	return firstErr
}

// arenaBytes returns the bytes of arena mapped so far.
func (t *memoryTier) arenaBytes() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return int64(t.nslots) * int64(t.stride)
}

// cachedBytes returns the page bytes held.
func (t *memoryTier) cachedBytes() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.bytes
}
