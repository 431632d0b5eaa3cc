package cache

// ArenaSegment returns the memory of segment i of the memory tier's arena
// (the SlotLocation.Segment of a page's slot), for registering it as an
// RDMA memory region that peers READ slots from. The memory is an
// anonymous mmap outside the Go heap, at a fixed address until Close. ok
// is false for a segment not mapped yet (the arena grows lazily) or after
// Close. Remote readers must check every slot they read (key, generation,
// checksum: see checkSlot): slots are rewritten in place.
func (c *Cache) ArenaSegment(i uint32) (mem []byte, ok bool) {
	t := c.memory
	if t == nil {
		return nil, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed || int(i) >= len(t.segs) || t.segs[i] == nil {
		return nil, false
	}
	return t.segs[i].mem, true
}
