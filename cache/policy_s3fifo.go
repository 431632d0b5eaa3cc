package cache

// S3-FIFO parameters (Yang et al., "FIFO queues are all you need for cache
// eviction", SOSP 2023).
const (
	// s3SmallPercent is the share of resident slots the small (probation)
	// FIFO may hold before it is evicted from.
	s3SmallPercent = 10
	// s3MaxFreq caps the 2-bit access counter.
	s3MaxFreq = 3
	// s3PromoteFreq is the hits a small-queue page needs to move to main.
	s3PromoteFreq = 1
)

// Slot queues of S3FIFO and TwoQ.
const (
	queueNone uint8 = iota
	queueSmall
	queueMain
)

// S3FIFO is the S3-FIFO policy: new pages enter a small FIFO (about 10% of
// the cache); at its tail a page hit at least once moves to the main FIFO,
// one never hit is evicted and its key remembered in a ghost; a miss on a
// ghost key goes straight to main. Main is a FIFO with lazy promotion: a
// page at its tail with a nonzero 2-bit counter is reinserted with the
// counter decremented. Hits only bump a counter (no list moves), one-hit
// wonders and scans pass through the small queue without disturbing main.
//
// It implements KeyedPolicy; without keys it still works, with no ghost
// hits. The Access hint is ignored.
type S3FIFO struct {
	links       slotLinks
	small, main slotList
	queue       []uint8
	freq        []uint8
	fp          []uint64 // fingerprint of the slot's page; 0 if unknown
	ghost       ghost
}

var _ KeyedPolicy = (*S3FIFO)(nil)

// NewS3FIFO returns an empty S3-FIFO policy.
func NewS3FIFO() *S3FIFO { return &S3FIFO{small: newSlotList(), main: newSlotList()} }

// Grow makes slot ids [0, n) valid and sizes the ghost to n pages.
func (p *S3FIFO) Grow(n int) {
	p.links.grow(n)
	for len(p.queue) < n {
		p.queue = append(p.queue, queueNone)
		p.freq = append(p.freq, 0)
		p.fp = append(p.fp, 0)
	}
	p.ghost.resize(n)
}

// Insert adds slot to the small queue.
func (p *S3FIFO) Insert(slot int32, _ Access) { p.insert(slot, 0) }

// InsertKey adds slot to main if its page was evicted recently from the
// small queue, else to the small queue.
func (p *S3FIFO) InsertKey(slot int32, key PageKey, _ Access) {
	p.insert(slot, pageFingerprint(key))
}

func (p *S3FIFO) insert(slot int32, fp uint64) {
	p.unlink(slot)
	p.fp[slot], p.freq[slot] = fp, 0
	if p.ghost.take(fp, p.small.len+p.main.len) {
		p.queue[slot] = queueMain
		p.links.pushFront(&p.main, slot)
		return
	}
	p.queue[slot] = queueSmall
	p.links.pushFront(&p.small, slot)
}

// Touch counts a hit on slot.
func (p *S3FIFO) Touch(slot int32, _ Access) {
	if p.queue[slot] != queueNone && p.freq[slot] < s3MaxFreq {
		p.freq[slot]++
	}
}

// Remove forgets slot; a page leaving the small queue is remembered in the
// ghost.
func (p *S3FIFO) Remove(slot int32) {
	if p.queue[slot] == queueSmall {
		p.ghost.add(p.fp[slot])
	}
	p.unlink(slot)
}

func (p *S3FIFO) unlink(slot int32) {
	switch p.queue[slot] {
	case queueSmall:
		p.links.remove(&p.small, slot)
	case queueMain:
		p.links.remove(&p.main, slot)
	}
	p.queue[slot] = queueNone
}

// Victim returns the next slot to evict, first moving hit pages from the
// small queue's tail to main and reinserting hit pages at main's tail.
// Each reinsertion spends a counter unit, so the loop ends.
func (p *S3FIFO) Victim() (int32, bool) {
	for {
		total := p.small.len + p.main.len
		if total == 0 {
			return noSlot, false
		}
		if p.small.len > 0 && (p.small.len*100 >= total*s3SmallPercent || p.main.len == 0) {
			t := p.small.tail
			if p.freq[t] < s3PromoteFreq {
				return t, true
			}
			p.links.remove(&p.small, t)
			p.queue[t] = queueMain
			p.links.pushFront(&p.main, t)
			continue
		}
		t := p.main.tail
		if p.freq[t] == 0 {
			return t, true
		}
		p.freq[t]--
		p.links.remove(&p.main, t)
		p.links.pushFront(&p.main, t)
	}
}
