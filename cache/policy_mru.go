package cache

// MRU evicts the most recently used slot. It is the right order for a loop
// over a file larger than the cache (LRU gets no hits there: each page is
// evicted just before it is needed again) and the wrong one for almost
// anything else; the auto policy uses its idea for sequential streams only.
//
// A Touch of the slot Victim just returned is taken as the tier declining
// that victim (it is pinned): the slot moves to the cold end so that the
// next Victim offers another one, instead of the same slot again.
type MRU struct {
	links      slotLinks
	list       slotList // front: most recently used
	linked     []bool
	lastVictim int32
}

var _ Policy = (*MRU)(nil)

// NewMRU returns an empty MRU policy.
func NewMRU() *MRU { return &MRU{list: newSlotList(), lastVictim: noSlot} }

// Grow makes slot ids [0, n) valid.
func (m *MRU) Grow(n int) {
	m.links.grow(n)
	for len(m.linked) < n {
		m.linked = append(m.linked, false)
	}
}

// Insert makes slot the most recently used.
func (m *MRU) Insert(slot int32, _ Access) {
	if m.linked[slot] {
		m.links.remove(&m.list, slot)
	}
	m.links.pushFront(&m.list, slot)
	m.linked[slot] = true
}

// Touch makes slot the most recently used, or, if it is the declined
// victim, the least.
func (m *MRU) Touch(slot int32, _ Access) {
	if !m.linked[slot] {
		return
	}
	m.links.remove(&m.list, slot)
	if slot == m.lastVictim {
		m.lastVictim = noSlot
		m.links.pushBack(&m.list, slot)
		return
	}
	m.links.pushFront(&m.list, slot)
}

// Remove forgets slot.
func (m *MRU) Remove(slot int32) {
	if slot == m.lastVictim {
		m.lastVictim = noSlot
	}
	if m.linked[slot] {
		m.links.remove(&m.list, slot)
		m.linked[slot] = false
	}
}

// Victim returns the most recently used slot.
func (m *MRU) Victim() (int32, bool) {
	m.lastVictim = m.list.head
	return m.list.head, m.list.head != noSlot
}
