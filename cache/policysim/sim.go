package policysim

import (
	"fmt"
	"math"

	"github.com/datenlord/datenlord-go/cache"
)

// Result counts the hits of one replay.
type Result struct {
	Hits, Accesses int
}

// HitRatio returns Hits/Accesses (0 for an empty trace).
func (r Result) HitRatio() float64 {
	if r.Accesses == 0 {
		return 0
	}
	return float64(r.Hits) / float64(r.Accesses)
}

// Simulate replays t through policy p over capacity slots, as the memory
// tier drives it: a hit Touches the slot with the reference's Access, a
// miss takes a free slot or evicts p.Victim() (Remove, then Insert of the
// new page in that slot; InsertKey with PageKey{Block: page} when p is a
// cache.KeyedPolicy). It returns an error if p misbehaves: no victim from
// a full cache or a victim slot that holds no page.
func Simulate(t Trace, p cache.Policy, capacity int) (Result, error) {
	if capacity <= 0 {
		return Result{}, fmt.Errorf("policysim: capacity %d", capacity)
	}
	keyed, _ := p.(cache.KeyedPolicy)
	p.Grow(capacity)
	slotOf := make([]int32, t.Pages)
	for i := range slotOf {
		slotOf[i] = -1
	}
	pageOf := make([]int32, capacity)
	used := 0
	res := Result{Accesses: len(t.Refs)}
	for i, ref := range t.Refs {
		if s := slotOf[ref.Page]; s >= 0 {
			res.Hits++
			p.Touch(s, ref.Access)
			continue
		}
		var s int32
		if used < capacity {
			s = int32(used)
			used++
		} else {
			v, ok := p.Victim()
			if !ok {
				return res, fmt.Errorf("policysim: %s reference %d: no victim from a full cache of %d", t.Name, i, capacity)
			}
			if v < 0 || int(v) >= capacity || pageOf[v] < 0 {
				return res, fmt.Errorf("policysim: %s reference %d: victim slot %d holds no page", t.Name, i, v)
			}
			p.Remove(v)
			slotOf[pageOf[v]] = -1
			s = v
		}
		pageOf[s] = int32(ref.Page)
		slotOf[ref.Page] = s
		if keyed != nil {
			keyed.InsertKey(s, cache.PageKey{Block: uint64(ref.Page)}, ref.Access)
		} else {
			p.Insert(s, ref.Access)
		}
	}
	return res, nil
}

// Belady returns the hit count of Belady's MIN on t with capacity pages:
// every miss is admitted and, on a full cache, the resident page whose
// next reference is farthest in the future (or never comes) is evicted.
// It is the upper bound for every policy Simulate can replay.
func Belady(t Trace, capacity int) Result {
	n := len(t.Refs)
	next := make([]int, n)
	last := make([]int, t.Pages)
	for i := range last {
		last[i] = math.MaxInt
	}
	for i := n - 1; i >= 0; i-- {
		p := t.Refs[i].Page
		next[i] = last[p]
		last[p] = i
	}
	resident := make([]bool, t.Pages)
	nextUse := last // reuse: nextUse[p] is valid while resident[p]
	var h maxHeap
	res := Result{Accesses: n}
	count := 0
	for i, ref := range t.Refs {
		p := ref.Page
		if resident[p] {
			res.Hits++
		} else {
			if count == capacity {
				for {
					e := h.pop()
					if resident[e.page] && nextUse[e.page] == e.next {
						resident[e.page] = false
						break
					}
				}
			} else {
				count++
			}
			resident[p] = true
		}
		nextUse[p] = next[i]
		h.push(heapEntry{next: next[i], page: p})
	}
	return res
}

type heapEntry struct {
	next int
	page uint32
}

// maxHeap orders entries by next use, farthest first. Stale entries (the
// page was referenced again or evicted) are skipped when popped.
type maxHeap []heapEntry

func (h *maxHeap) push(e heapEntry) {
	*h = append(*h, e)
	a := *h
	for i := len(a) - 1; i > 0; {
		parent := (i - 1) / 2
		if a[parent].next >= a[i].next {
			break
		}
		a[parent], a[i] = a[i], a[parent]
		i = parent
	}
}

func (h *maxHeap) pop() heapEntry {
	a := *h
	top := a[0]
	last := len(a) - 1
	a[0] = a[last]
	a = a[:last]
	for i := 0; ; {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(a) && a[l].next > a[m].next {
			m = l
		}
		if r < len(a) && a[r].next > a[m].next {
			m = r
		}
		if m == i {
			break
		}
		a[i], a[m] = a[m], a[i]
		i = m
	}
	*h = a
	return top
}
