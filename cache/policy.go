package cache

// Policy orders the slots of a tier for eviction. Slots are dense ids
// [0, n). A Policy is not safe for concurrent use: its tier calls it under
// the tier's lock, so every method must be O(1)-ish and, after Grow, must
// not allocate (the hit path calls Touch).
//
// LRU is the memory tier's default when Config.MemoryPolicy is nil. MRU,
// S3FIFO, TwoQ and Auto (S3-FIFO for random pages, a bounded MRU scan
// area for sequential ones) plug in behind the same interface;
// NewPolicyFactory builds them by name, and package cache/policysim
// compares them on traces against Belady's optimum.
type Policy interface {
	// Grow makes slot ids [0, n) valid. n never shrinks.
	Grow(n int)
	// Insert adds a slot that now holds a page.
	Insert(slot int32, access Access)
	// Touch records a hit on a slot that holds a page.
	Touch(slot int32, access Access)
	// Remove forgets a slot (its page was dropped or evicted).
	Remove(slot int32)
	// Victim returns the slot to evict next without removing it; ok is
	// false when no slot holds a page. The tier may decline a victim (it is
	// being read) and Touch it instead.
	Victim() (slot int32, ok bool)
}

const noSlot int32 = -1

// LRU evicts the least recently used slot. It is an intrusive doubly
// linked list over slot ids held in arrays, so inserts and hits allocate
// nothing. The Access hint is ignored.
type LRU struct {
	prev, next []int32
	linked     []bool
	head, tail int32 // head is the most recently used
}

var _ Policy = (*LRU)(nil)

// NewLRU returns an empty LRU policy.
func NewLRU() *LRU { return &LRU{head: noSlot, tail: noSlot} }

// Grow makes slot ids [0, n) valid.
func (l *LRU) Grow(n int) {
	for len(l.prev) < n {
		l.prev = append(l.prev, noSlot)
		l.next = append(l.next, noSlot)
		l.linked = append(l.linked, false)
	}
}

// Insert makes slot the most recently used.
func (l *LRU) Insert(slot int32, _ Access) {
	if l.linked[slot] {
		l.unlink(slot)
	}
	l.pushFront(slot)
}

// Touch makes slot the most recently used.
func (l *LRU) Touch(slot int32, _ Access) {
	if !l.linked[slot] || l.head == slot {
		return
	}
	l.unlink(slot)
	l.pushFront(slot)
}

// Remove forgets slot.
func (l *LRU) Remove(slot int32) {
	if l.linked[slot] {
		l.unlink(slot)
	}
}

// Victim returns the least recently used slot.
func (l *LRU) Victim() (int32, bool) { return l.tail, l.tail != noSlot }

func (l *LRU) pushFront(s int32) {
	l.prev[s], l.next[s] = noSlot, l.head
	if l.head != noSlot {
		l.prev[l.head] = s
	} else {
		l.tail = s
	}
	l.head = s
	l.linked[s] = true
}

func (l *LRU) unlink(s int32) {
	p, n := l.prev[s], l.next[s]
	if p != noSlot {
		l.next[p] = n
	} else {
		l.head = n
	}
	if n != noSlot {
		l.prev[n] = p
	} else {
		l.tail = p
	}
	l.prev[s], l.next[s] = noSlot, noSlot
	l.linked[s] = false
}

// KeyedPolicy is a Policy that also wants to know which page a slot holds,
// to remember pages after their slot is reused (the ghost queues of
// S3-FIFO and 2Q: a page evicted early and soon missed again was not a
// one-hit wonder). A tier whose policy implements it calls InsertKey
// instead of Insert; a policy given plain Insert still works, without
// ghost hits for that slot.
type KeyedPolicy interface {
	Policy
	// InsertKey is Insert for a slot that now holds page key.
	InsertKey(slot int32, key PageKey, access Access)
}
