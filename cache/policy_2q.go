package cache

// 2Q parameters (Johnson and Shasha, VLDB 1994, "full version").
const (
	// twoQInPercent is the share of resident slots the A1in FIFO may hold.
	twoQInPercent = 25
	// twoQOutPercent is the ghost (A1out) length as a share of resident
	// slots.
	twoQOutPercent = 50
)

// TwoQ is the 2Q policy: new pages enter a FIFO (A1in, a quarter of the
// cache) and hits there do not move them; pages evicted from A1in are
// remembered in a ghost (A1out), and a miss on a remembered page enters
// the LRU main queue (Am). Scans and one-hit wonders pass through A1in.
//
// It implements KeyedPolicy; without keys it still works, with no ghost
// hits. The Access hint is ignored. A Touch of the slot Victim just
// returned (the tier declining a pinned victim) moves it to the front of
// Am.
type TwoQ struct {
	links      slotLinks
	in, main   slotList
	queue      []uint8
	fp         []uint64
	ghost      ghost
	lastVictim int32
}

var _ KeyedPolicy = (*TwoQ)(nil)

// NewTwoQ returns an empty 2Q policy.
func NewTwoQ() *TwoQ { return &TwoQ{in: newSlotList(), main: newSlotList(), lastVictim: noSlot} }

// Grow makes slot ids [0, n) valid and sizes the ghost to n pages.
func (p *TwoQ) Grow(n int) {
	p.links.grow(n)
	for len(p.queue) < n {
		p.queue = append(p.queue, queueNone)
		p.fp = append(p.fp, 0)
	}
	p.ghost.resize(n)
}

// Insert adds slot to A1in.
func (p *TwoQ) Insert(slot int32, _ Access) { p.insert(slot, 0) }

// InsertKey adds slot to Am if its page is in the ghost, else to A1in.
func (p *TwoQ) InsertKey(slot int32, key PageKey, _ Access) {
	p.insert(slot, pageFingerprint(key))
}

func (p *TwoQ) insert(slot int32, fp uint64) {
	p.unlink(slot)
	p.fp[slot] = fp
	if p.ghost.take(fp, (p.in.len+p.main.len)*twoQOutPercent/100+1) {
		p.queue[slot] = queueMain
		p.links.pushFront(&p.main, slot)
		return
	}
	p.queue[slot] = queueSmall
	p.links.pushFront(&p.in, slot)
}

// Touch moves a slot of Am to its front; a hit in A1in changes nothing.
func (p *TwoQ) Touch(slot int32, _ Access) {
	q := p.queue[slot]
	if slot == p.lastVictim {
		p.lastVictim = noSlot
		if q != queueNone {
			p.unlink(slot)
			p.queue[slot] = queueMain
			p.links.pushFront(&p.main, slot)
		}
		return
	}
	if q == queueMain && p.main.head != slot {
		p.links.remove(&p.main, slot)
		p.links.pushFront(&p.main, slot)
	}
}

// Remove forgets slot; a page leaving A1in is remembered in the ghost.
func (p *TwoQ) Remove(slot int32) {
	if slot == p.lastVictim {
		p.lastVictim = noSlot
	}
	if p.queue[slot] == queueSmall {
		p.ghost.add(p.fp[slot])
	}
	p.unlink(slot)
}

func (p *TwoQ) unlink(slot int32) {
	switch p.queue[slot] {
	case queueSmall:
		p.links.remove(&p.in, slot)
	case queueMain:
		p.links.remove(&p.main, slot)
	}
	p.queue[slot] = queueNone
}

// Victim returns A1in's oldest slot while A1in is over its share (or Am is
// empty), else Am's least recently used slot.
func (p *TwoQ) Victim() (int32, bool) {
	total := p.in.len + p.main.len
	v := noSlot
	switch {
	case total == 0:
	case p.in.len > 0 && (p.in.len*100 > total*twoQInPercent || p.main.len == 0):
		v = p.in.tail
	default:
		v = p.main.tail
	}
	p.lastVictim = v
	return v, v != noSlot
}
