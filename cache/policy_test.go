package cache

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
)

func TestPolicyFactory(t *testing.T) {
	for _, name := range PolicyNames() {
		f, err := NewPolicyFactory(strings.ToUpper(name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if a, b := f(), f(); a == b {
			t.Fatalf("%s: factory returned the same policy twice", name)
		}
	}
	_, err := NewPolicyFactory("clock")
	if err == nil {
		t.Fatal("unknown policy accepted")
	}
	for _, name := range PolicyNames() {
		if !strings.Contains(err.Error(), name) {
			t.Fatalf("error %q does not list %q", err, name)
		}
	}
}

// walkList returns the slots of l front to back, checking the links.
func walkList(k *slotLinks, l *slotList) ([]int32, error) {
	var out []int32
	prev := noSlot
	for s := l.head; s != noSlot; s = k.next[s] {
		if k.prev[s] != prev {
			return nil, fmt.Errorf("slot %d: prev %d, want %d", s, k.prev[s], prev)
		}
		out = append(out, s)
		if len(out) > len(k.next) {
			return nil, fmt.Errorf("cycle")
		}
		prev = s
	}
	if l.tail != prev {
		return nil, fmt.Errorf("tail %d, want %d", l.tail, prev)
	}
	if len(out) != l.len {
		return nil, fmt.Errorf("len %d, walked %d", l.len, len(out))
	}
	return out, nil
}

// policySlots returns the slots p holds, checking its lists and tags.
func policySlots(p Policy) ([]int32, error) {
	var out []int32
	add := func(k *slotLinks, l *slotList, tags []uint8, tag uint8) error {
		got, err := walkList(k, l)
		if err != nil {
			return err
		}
		for _, s := range got {
			if tags != nil && tags[s] != tag {
				return fmt.Errorf("slot %d tagged %d on list %d", s, tags[s], tag)
			}
		}
		out = append(out, got...)
		return nil
	}
	var err error
	switch p := p.(type) {
	case *LRU:
		var got []int32
		if got, err = walkList(&slotLinks{p.prev, p.next}, &slotList{p.head, p.tail, countTrue(p.linked)}); err == nil {
			out = got
		}
	case *MRU:
		err = add(&p.links, &p.list, nil, 0)
	case *S3FIFO:
		if err = add(&p.links, &p.small, p.queue, queueSmall); err == nil {
			err = add(&p.links, &p.main, p.queue, queueMain)
		}
	case *TwoQ:
		if err = add(&p.links, &p.in, p.queue, queueSmall); err == nil {
			err = add(&p.links, &p.main, p.queue, queueMain)
		}
	case *Auto:
		if err = add(&p.links, &p.window, p.queue, autoWindow); err == nil {
			err = add(&p.links, &p.older, p.queue, autoOlder)
		}
		if err == nil {
			var random []int32
			if random, err = policySlots(p.random); err == nil {
				for _, s := range random {
					if p.queue[s] != autoRandom {
						err = fmt.Errorf("random slot %d tagged %d", s, p.queue[s])
					}
				}
				out = append(out, random...)
			}
		}
	default:
		err = fmt.Errorf("unknown policy %T", p)
	}
	slices.Sort(out)
	return out, err
}

func countTrue(b []bool) int {
	n := 0
	for _, v := range b {
		if v {
			n++
		}
	}
	return n
}

// insertPage inserts slot as the tier does.
func insertPage(p Policy, slot int32, key PageKey, access Access) {
	if kp, ok := p.(KeyedPolicy); ok {
		kp.InsertKey(slot, key, access)
	} else {
		p.Insert(slot, access)
	}
}

// TestPolicyInvariants drives every policy with random operations and
// checks, after each, that its lists hold exactly the resident slots,
// that Victim offers a resident slot whenever there is one, and that a
// declined victim is not offered forever.
func TestPolicyInvariants(t *testing.T) {
	for _, name := range PolicyNames() {
		t.Run(name, func(t *testing.T) {
			newPolicy, _ := NewPolicyFactory(name)
			r := rand.New(rand.NewPCG(7, uint64(len(name))))
			for round := range 20 {
				const n = 64
				p := newPolicy()
				p.Grow(n / 2)
				p.Grow(n) // grows in steps, like the tier
				resident := map[int32]bool{}
				page := uint64(0)
				for op := range 2000 {
					s := int32(r.IntN(n))
					access := Access(r.IntN(2))
					switch k := r.IntN(10); {
					case k < 4: // miss: insert into a free slot, or evict first
						if resident[s] {
							v, ok := p.Victim()
							if !ok || !resident[v] {
								t.Fatalf("round %d op %d: Victim() = %d, %v from %d resident", round, op, v, ok, len(resident))
							}
							p.Remove(v)
							delete(resident, v)
							s = v
						}
						page++
						if r.IntN(4) == 0 { // a page seen before: ghost hits
							page = uint64(r.IntN(int(page)))
						}
						insertPage(p, s, PageKey{Block: page}, access)
						resident[s] = true
					case k < 7:
						p.Touch(s, access) // also on absent slots: must be a no-op
					case k < 8:
						p.Remove(s) // also on absent slots
						delete(resident, s)
					default: // the tier declines victims while they are pinned
						if len(resident) < 2 {
							break
						}
						first, _ := p.Victim()
						other := false
						for range 8 {
							p.Touch(first, AccessRandom)
							if v, _ := p.Victim(); v != first {
								other = true
								break
							}
						}
						if !other {
							t.Fatalf("round %d op %d: declined victim %d offered 9 times", round, op, first)
						}
					}
					got, err := policySlots(p)
					if err != nil {
						t.Fatalf("round %d op %d: %v", round, op, err)
					}
					want := make([]int32, 0, len(resident))
					for s := range resident {
						want = append(want, s)
					}
					slices.Sort(want)
					if !slices.Equal(got, want) {
						t.Fatalf("round %d op %d: policy holds %v, want %v", round, op, got, want)
					}
					if v, ok := p.Victim(); ok != (len(resident) > 0) || ok && !resident[v] {
						t.Fatalf("round %d op %d: Victim() = %d, %v with %d resident", round, op, v, ok, len(resident))
					}
				}
			}
		})
	}
}

// recencyModel is the obvious LRU/MRU: a slice ordered least to most
// recently used. For MRU it mirrors the decline rule: a Touch of the slot
// the last Victim returned moves it to the cold end.
type recencyModel struct {
	order      []int32
	mru        bool
	lastVictim int32
}

func (m *recencyModel) drop(s int32) bool {
	i := slices.Index(m.order, s)
	if i >= 0 {
		m.order = slices.Delete(m.order, i, i+1)
	}
	return i >= 0
}

func (m *recencyModel) touch(s int32) {
	if !m.drop(s) {
		return
	}
	if m.mru && s == m.lastVictim {
		m.lastVictim = noSlot
		m.order = append([]int32{s}, m.order...)
		return
	}
	m.order = append(m.order, s)
}

func (m *recencyModel) remove(s int32) {
	m.drop(s)
	if s == m.lastVictim {
		m.lastVictim = noSlot
	}
}

func (m *recencyModel) victim() (int32, bool) {
	if len(m.order) == 0 {
		m.lastVictim = noSlot
		return noSlot, false
	}
	if m.mru {
		m.lastVictim = m.order[len(m.order)-1]
		return m.lastVictim, true
	}
	return m.order[0], true
}

// TestRecencyPoliciesDifferential checks LRU and MRU against
// recencyModel over random operations, including Touch and Remove of
// absent slots and declined victims.
func TestRecencyPoliciesDifferential(t *testing.T) {
	for _, mru := range []bool{false, true} {
		var p Policy = NewLRU()
		if mru {
			p = NewMRU()
		}
		m := &recencyModel{mru: mru, lastVictim: noSlot}
		p.Grow(32)
		r := rand.New(rand.NewPCG(3, 4))
		for op := range 20000 {
			s := int32(r.IntN(32))
			switch r.IntN(5) {
			case 0, 1:
				if slices.Contains(m.order, s) {
					break // the tier inserts only slots it freed
				}
				p.Insert(s, Access(r.IntN(2)))
				m.order = append(m.order, s)
			case 2:
				p.Touch(s, Access(r.IntN(2)))
				m.touch(s)
			case 3:
				p.Remove(s)
				m.remove(s)
			case 4:
				v, ok := p.Victim()
				mv, mok := m.victim()
				if v != mv || ok != mok {
					t.Fatalf("mru=%v op %d: Victim() = %d, %v; model %d, %v", mru, op, v, ok, mv, mok)
				}
				if ok && r.IntN(2) == 0 { // declined
					p.Touch(v, AccessRandom)
					m.touch(v)
				}
			}
			got, err := policySlots(p)
			if err != nil {
				t.Fatalf("mru=%v op %d: %v", mru, op, err)
			}
			want := slices.Clone(m.order)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("mru=%v op %d: policy holds %v, model %v", mru, op, got, want)
			}
		}
	}
}

// TestPolicyAllocs checks that every policy is allocation-free in steady
// state: a full cache taking misses and hits.
func TestPolicyAllocs(t *testing.T) {
	for _, name := range PolicyNames() {
		newPolicy, _ := NewPolicyFactory(name)
		p := newPolicy()
		const n = 1024
		p.Grow(n)
		for s := range int32(n) {
			insertPage(p, s, PageKey{Block: uint64(s)}, Access(s%2))
		}
		page := uint64(n)
		allocs := testing.AllocsPerRun(1000, func() {
			v, _ := p.Victim()
			p.Remove(v)
			page++
			insertPage(p, v, PageKey{Block: page % (3 * n)}, Access(page%2))
			p.Touch(int32(page%n), AccessRandom)
		})
		if allocs != 0 {
			t.Errorf("%s: %v allocs per miss+hit", name, allocs)
		}
	}
}

func TestGhost(t *testing.T) {
	var g ghost
	g.resize(100)
	for i := range uint64(300) {
		g.add(pageFingerprint(PageKey{Block: i}))
	}
	if !g.take(pageFingerprint(PageKey{Block: 299}), 100) {
		t.Fatal("newest eviction forgotten")
	}
	if g.take(pageFingerprint(PageKey{Block: 299}), 100) {
		t.Fatal("ghost hit not forgotten")
	}
	if g.take(pageFingerprint(PageKey{Block: 10}), 100) {
		t.Fatal("eviction older than the window remembered")
	}
	if g.take(pageFingerprint(PageKey{Block: 1000}), 100) {
		t.Fatal("page never evicted remembered")
	}
	remembered := 0
	for i := uint64(200); i < 299; i++ {
		if g.take(pageFingerprint(PageKey{Block: i}), 100) {
			remembered++
		}
	}
	if remembered < 90 {
		t.Fatalf("ghost remembered %d of the last 99 evictions", remembered)
	}
}

// TestMemoryTierWithEveryPolicy runs concurrent random and sequential
// readers, drops and puts over a memory tier much smaller than the data,
// with each policy.
func TestMemoryTierWithEveryPolicy(t *testing.T) {
	ctx := context.Background()
	b := newBackend(t)
	const blocks, blockLen = 6, 16*testPage + 123
	lens := make([]int, blocks)
	for i := range lens {
		lens[i] = blockLen
	}
	putBlocks(t, b, lens...)
	for _, name := range PolicyNames() {
		t.Run(name, func(t *testing.T) {
			newPolicy, _ := NewPolicyFactory(name)
			c, err := New(Config{PageSize: testPage, MemBytes: slotBytes(20), MemoryPolicy: newPolicy}, b)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			var wg sync.WaitGroup
			for g := range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					r := rand.New(rand.NewPCG(uint64(g), 2))
					dst := make([]byte, testPage)
					for i := range 300 {
						block := uint64(r.IntN(blocks) + 1)
						switch {
						case g == 0 && i%40 == 0:
							c.DropBlock(ctx, block)
						case g == 1: // a scanner
							idx := uint32(i % 17)
							if _, err := c.ReadPage(ctx, PageKey{uint64(i/17%blocks + 1), idx}, pageLen(blockLen, idx), dst, AccessSequential); err != nil {
								t.Error(err)
								return
							}
						default:
							readPage(t, c, block, blockLen, uint32(r.IntN(17)))
						}
					}
				}()
			}
			wg.Wait()
			if got := c.memory.arenaBytes(); got > slotBytes(20) {
				t.Fatalf("arena %d bytes over bound", got)
			}
		})
	}
}
