package store

import "sync"

// openBlock is a read descriptor of one block, shared by concurrent reads.
type openBlock struct {
	id         uint64
	fd         int
	refs       int  // reads using fd; guarded by fdCache.mu
	cached     bool // reachable from fdCache.byID; guarded by fdCache.mu
	prev, next *openBlock
}

// fdCache keeps up to max block descriptors open, least recently used
// first out. Blocks are immutable, so a descriptor stays valid until the
// block is deleted; invalidate (called by Delete) drops it. A descriptor
// is closed once it is neither cached nor in use.
type fdCache struct {
	io  fileIO
	max int

	mu     sync.Mutex
	byID   map[uint64]*openBlock
	head   openBlock // sentinel: head.next is the most recently used
	epoch  uint64    // bumped by invalidate: a descriptor opened before is not cached
	closed bool
}

func newFDCache(fio fileIO, max int) *fdCache {
	c := &fdCache{io: fio, max: max, byID: make(map[uint64]*openBlock)}
	c.head.next, c.head.prev = &c.head, &c.head
	return c
}

// acquire returns an open descriptor of block id, opening path(id) on a
// miss. The caller must release it.
func (c *fdCache) acquire(id uint64, path func(uint64) string) (*openBlock, error) {
	c.mu.Lock()
	if b := c.byID[id]; b != nil {
		b.refs++
		c.unlink(b)
		c.pushFront(b)
		c.mu.Unlock()
		return b, nil
	}
	epoch := c.epoch
	c.mu.Unlock()

	fd, err := c.io.OpenRead(path(id))
	if err != nil {
		return nil, err
	}
	b := &openBlock{id: id, fd: fd, refs: 1}

	var evicted []int
	c.mu.Lock()
	// A Delete since the open may have unlinked the file this descriptor
	// still reads: use it this once but do not cache it.
	if !c.closed && c.epoch == epoch && c.byID[id] == nil {
		b.cached = true
		c.byID[id] = b
		c.pushFront(b)
		for len(c.byID) > c.max {
			victim := c.head.prev
			c.drop(victim)
			if victim.refs == 0 {
				evicted = append(evicted, victim.fd)
			}
		}
	}
	c.mu.Unlock()
	for _, fd := range evicted {
		_ = c.io.Close(fd)
	}
	return b, nil
}

// release ends one use of b, closing it if it is no longer cached.
func (c *fdCache) release(b *openBlock) {
	c.mu.Lock()
	b.refs--
	closeIt := b.refs == 0 && !b.cached
	c.mu.Unlock()
	if closeIt {
		_ = c.io.Close(b.fd)
	}
}

// invalidate drops block id's descriptor (closing it when unused) and
// keeps descriptors opened concurrently from being cached.
func (c *fdCache) invalidate(id uint64) {
	c.mu.Lock()
	c.epoch++
	b := c.byID[id]
	closeIt := false
	if b != nil {
		c.drop(b)
		closeIt = b.refs == 0
	}
	c.mu.Unlock()
	if closeIt {
		_ = c.io.Close(b.fd)
	}
}

// closeAll drops every descriptor; ones in use close on release.
func (c *fdCache) closeAll() {
	var unused []int
	c.mu.Lock()
	c.closed = true
	for _, b := range c.byID {
		c.drop(b)
		if b.refs == 0 {
			unused = append(unused, b.fd)
		}
	}
	c.mu.Unlock()
	for _, fd := range unused {
		_ = c.io.Close(fd)
	}
}

// drop removes b from the index and the list; c.mu must be held.
func (c *fdCache) drop(b *openBlock) {
	delete(c.byID, b.id)
	c.unlink(b)
	b.cached = false
}

func (c *fdCache) unlink(b *openBlock) {
	b.prev.next, b.next.prev = b.next, b.prev
	b.prev, b.next = nil, nil
}

func (c *fdCache) pushFront(b *openBlock) {
	b.prev, b.next = &c.head, c.head.next
	c.head.next.prev = b
	c.head.next = b
}

// len returns the number of cached descriptors (for tests).
func (c *fdCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.byID)
}
