package cache

import (
	"context"
	"encoding/binary"
	"hash/crc32"
	"sync/atomic"
)

// PinnedPage is a read-only view of a page in the memory tier's arena,
// pinned so that the slot is neither evicted, dropped for reuse nor
// rewritten until Release: a server can write it to a socket without
// copying it first. The zero value is an empty, unpinned page.
//
// The bytes must not be modified, and must not be used after Release. A
// pin delays Cache.Close (which waits for pins to drop), so hold it only
// while the bytes are being sent.
type PinnedPage struct {
	ref  *atomic.Int32
	data []byte
}

// Bytes returns the page's valid bytes (read-only; valid until Release).
func (p *PinnedPage) Bytes() []byte { return p.data }

// Release unpins the page. It is idempotent.
func (p *PinnedPage) Release() {
	if p.ref != nil {
		p.ref.Add(-1)
		p.ref = nil
	}
	p.data = nil
}

// PinPage pins page key in the memory tier and returns a view of its
// first length bytes; ok is false when memory does not hold the page with
// that length (the caller then reads it with ReadPage, which also fetches
// and caches it). The slot is validated exactly as a copying read
// validates it (key, length, generation and the CRC-32C of the bytes, the
// CRC computed once, on the pinned bytes themselves), and a slot that
// fails is dropped and reported as a miss. A hit counts as a memory hit;
// a miss is not counted (the ReadPage that follows counts it).
func (c *Cache) PinPage(_ context.Context, key PageKey, length int) (PinnedPage, bool) {
	if length <= 0 || length > c.cfg.PageSize {
		return PinnedPage{}, false
	}
	p, ok := c.memory.pin(key, length)
	if ok {
		c.tierM[0].hits.Inc()
	}
	return p, ok
}

// pin pins the slot of key if it holds exactly length bytes and passes
// its checks (see PinPage).
func (t *memoryTier) pin(key PageKey, length int) (PinnedPage, bool) {
	t.mu.Lock()
	s, ok := t.index[key]
	if !ok || t.closed || int(t.lens[s]) != length {
		t.mu.Unlock()
		return PinnedPage{}, false
	}
	seg, i, off := t.slotLoc(s)
	ref := &seg.refs[i]
	ref.Add(1)
	t.policy.Touch(s, AccessRandom)
	gen := t.gens[s]
	t.mu.Unlock()

	// Pinned: the slot cannot be refilled until the pin drops, so the
	// bytes checked here are the bytes the caller sends.
	hdr := seg.mem[off : off+slotHeaderSize]
	data := seg.mem[off+slotHeaderSize : off+slotHeaderSize+length : off+slotHeaderSize+length]
	if binary.LittleEndian.Uint64(hdr[hdrBlock:]) != key.Block ||
		binary.LittleEndian.Uint32(hdr[hdrIndex:]) != key.Index ||
		binary.LittleEndian.Uint32(hdr[hdrLength:]) != uint32(length) ||
		binary.LittleEndian.Uint64(hdr[hdrGeneration:]) != gen ||
		binary.LittleEndian.Uint32(hdr[hdrChecksum:]) != crc32.Checksum(data, t.crc) {
		ref.Add(-1)
		t.dropCorrupt(key, s, gen)
		return PinnedPage{}, false
	}
	return PinnedPage{ref: ref, data: data}, true
}
