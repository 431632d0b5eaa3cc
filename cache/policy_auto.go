package cache

// Auto parameters.
const (
	// autoScanDivisor bounds the slots sequential pages may hold while
	// random pages compete for the cache: resident/autoScanDivisor.
	autoScanDivisor = 8
	// autoMaxWindow caps the read-ahead window: the newest sequential
	// pages, which are evicted only after older sequential pages so that
	// read-ahead is not thrown away before it is read.
	autoMaxWindow = 256
)

// Auto is the default policy: it uses the Access hint to keep scans from
// flushing the random working set (DESIGN.md section 4), and S3-FIFO for
// the random pages.
//
//   - Random inserts go to an S3-FIFO (see S3FIFO), which keeps frequently
//     used pages over one-hit wonders.
//   - Sequential inserts go to a separate scan area, bounded by a share of
//     the cache (1/8) while random pages want the space: a scan longer
//     than that evicts its own pages, never the random working set. The
//     newest sequential pages (the read-ahead window: an eighth of the
//     scan area, at most 256) are kept; older sequential pages are evicted
//     newest first (MRU), so a loop over a file larger than the cache
//     keeps hitting the pages it kept instead of missing everywhere.
//   - Hits on sequential pages do not promote them (a tier cannot always
//     tell a read-ahead hit from a random one); a page read randomly after
//     its scan copy was evicted comes back as a random insert.
//
// A Touch of a scan-area slot that Victim just returned (the tier
// declining a pinned victim) moves it to the random S3-FIFO.
type Auto struct {
	links      slotLinks // of the scan area
	random     *S3FIFO   // random pages, with links of its own
	window     slotList  // newest sequential pages: front newest
	older      slotList  // older sequential pages: front newest
	queue      []uint8
	key        []PageKey // of scan-area slots, for a declined victim moved to random
	lastVictim int32
	declined   int32 // the last victim the tier declined
}

// Auto slot queues (queueNone is shared).
const (
	autoRandom uint8 = iota + 1
	autoWindow
	autoOlder
)

var _ KeyedPolicy = (*Auto)(nil)

// NewAuto returns an empty auto policy.
func NewAuto() *Auto {
	return &Auto{random: NewS3FIFO(), window: newSlotList(), older: newSlotList(), lastVictim: noSlot, declined: noSlot}
}

// Grow makes slot ids [0, n) valid.
func (a *Auto) Grow(n int) {
	a.links.grow(n)
	a.random.Grow(n)
	for len(a.queue) < n {
		a.queue = append(a.queue, queueNone)
		a.key = append(a.key, PageKey{})
	}
}

func (a *Auto) unlink(slot int32) {
	switch a.queue[slot] {
	case autoRandom:
		a.random.Remove(slot)
	case autoWindow:
		a.links.remove(&a.window, slot)
	case autoOlder:
		a.links.remove(&a.older, slot)
	}
	a.queue[slot] = queueNone
}

// scanShare returns the scan area bound and the read-ahead window size.
func (a *Auto) scanShare() (scan, window int) {
	total := a.random.small.len + a.random.main.len + a.window.len + a.older.len
	scan = max(1, total/autoScanDivisor)
	window = min(max(1, scan/8), autoMaxWindow)
	return scan, window
}

// Insert adds slot to the random S3-FIFO or the scan area.
func (a *Auto) Insert(slot int32, access Access) { a.insert(slot, PageKey{}, false, access) }

// InsertKey adds slot to the random S3-FIFO (which may recognise the page
// from its ghost) or the scan area.
func (a *Auto) InsertKey(slot int32, key PageKey, access Access) { a.insert(slot, key, true, access) }

func (a *Auto) insert(slot int32, key PageKey, keyed bool, access Access) {
	a.unlink(slot)
	if access != AccessSequential {
		a.queue[slot] = autoRandom
		if keyed {
			a.random.InsertKey(slot, key, access)
		} else {
			a.random.Insert(slot, access)
		}
		return
	}
	a.key[slot] = key
	a.queue[slot] = autoWindow
	a.links.pushFront(&a.window, slot)
	_, w := a.scanShare()
	for a.window.len > w {
		t := a.window.tail
		a.links.remove(&a.window, t)
		a.queue[t] = autoOlder
		a.links.pushFront(&a.older, t)
	}
}

// Touch records a hit on a random slot; hits on sequential slots change
// nothing unless the slot is a declined victim.
func (a *Auto) Touch(slot int32, access Access) {
	switch q := a.queue[slot]; {
	case q == autoRandom:
		a.random.Touch(slot, access)
	case q != queueNone && slot == a.lastVictim:
		key := a.key[slot]
		a.unlink(slot)
		a.queue[slot] = autoRandom
		a.random.InsertKey(slot, key, AccessRandom)
	}
	if slot == a.lastVictim {
		a.lastVictim, a.declined = noSlot, slot
	}
}

// Remove forgets slot.
func (a *Auto) Remove(slot int32) {
	if slot == a.lastVictim {
		a.lastVictim = noSlot
	}
	if slot == a.declined {
		a.declined = noSlot
	}
	a.unlink(slot)
}

// Victim evicts from the scan area while it is over its share (or there
// are no random pages): the newest page older than the read-ahead window,
// else the window's oldest. Otherwise the random S3-FIFO chooses, unless
// it offers again the victim the tier just declined (it can, when it
// holds few pages) and the scan area has one to give instead.
func (a *Auto) Victim() (int32, bool) {
	scan, _ := a.scanShare()
	n := a.window.len + a.older.len
	v, ok := noSlot, false
	if n == 0 || n <= scan && a.random.small.len+a.random.main.len > 0 {
		v, ok = a.random.Victim()
	}
	if n > 0 && (!ok || v == a.declined) {
		if a.older.len > 0 {
			v = a.older.head
		} else {
			v = a.window.tail
		}
		ok = true
	}
	a.lastVictim, a.declined = v, noSlot
	return v, ok
}
