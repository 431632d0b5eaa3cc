package cache

import (
	"testing"
)

// BenchmarkPolicy measures the per-operation cost of each policy on a full
// cache of 64k slots: Touch (a hit), and Victim+Remove+Insert (a miss that
// evicts), half of the inserts sequential.
func BenchmarkPolicy(b *testing.B) {
	const n = 1 << 16
	for _, name := range PolicyNames() {
		newPolicy, _ := NewPolicyFactory(name)
		fill := func() Policy {
			p := newPolicy()
			p.Grow(n)
			for s := range int32(n) {
				insertPage(p, s, PageKey{Block: uint64(s)}, Access(s%2))
			}
			return p
		}
		b.Run(name+"/Touch", func(b *testing.B) {
			p := fill()
			b.ReportAllocs()
			i := uint32(0)
			for b.Loop() {
				i = i*1664525 + 1013904223 // LCG: a random-looking slot
				p.Touch(int32(i>>16), AccessRandom)
			}
		})
		b.Run(name+"/Evict+Insert", func(b *testing.B) {
			p := fill()
			b.ReportAllocs()
			page := uint64(n)
			for b.Loop() {
				v, _ := p.Victim()
				p.Remove(v)
				page++
				insertPage(p, v, PageKey{Block: page % (4 * n)}, Access(page%2))
			}
		})
	}
}
