package cache

// blockChains links the slots of each block into a doubly linked chain,
// so that dropping a block (after garbage collection) costs that block's
// cached pages, not a scan of the tier. Slots are int32 indexes; the
// chains live in arrays that grow with the tier, so linking allocates
// nothing per page. The owner's lock guards it.
type blockChains struct {
	head       map[uint64]int32
	prev, next []int32
}

func newBlockChains(slots int) blockChains {
	return blockChains{head: make(map[uint64]int32), prev: make([]int32, slots), next: make([]int32, slots)}
}

// grow makes room for n more slots.
func (c *blockChains) grow(n int) {
	c.prev = append(c.prev, make([]int32, n)...)
	c.next = append(c.next, make([]int32, n)...)
}

// link puts slot s at the head of block's chain.
func (c *blockChains) link(s int32, block uint64) {
	head, ok := c.head[block]
	if !ok {
		head = noSlot
	}
	c.prev[s], c.next[s] = noSlot, head
	if head != noSlot {
		c.prev[head] = s
	}
	c.head[block] = s
}

// unlink takes slot s out of block's chain.
func (c *blockChains) unlink(s int32, block uint64) {
	p, n := c.prev[s], c.next[s]
	if p != noSlot {
		c.next[p] = n
	} else if n != noSlot {
		c.head[block] = n
	} else {
		delete(c.head, block)
	}
	if n != noSlot {
		c.prev[n] = p
	}
	c.prev[s], c.next[s] = noSlot, noSlot
}

// each calls fn for every slot of block; fn may unlink the slot it is
// given.
func (c *blockChains) each(block uint64, fn func(s int32)) {
	s, ok := c.head[block]
	if !ok {
		return
	}
	for s != noSlot {
		next := c.next[s]
		fn(s)
		s = next
	}
}

// reset forgets every chain.
func (c *blockChains) reset() { clear(c.head) }
