package policysim

import (
	"math/rand/v2"

	"github.com/datenlord/datenlord-go/cache"
)

// Ref is one page reference of a trace.
type Ref struct {
	Page   uint32
	Access cache.Access
}

// Trace is a deterministic sequence of page references over pages
// [0, Pages).
type Trace struct {
	Name  string
	Pages int // distinct pages the trace may touch; cache sizes are fractions of it
	Refs  []Ref
}

// Zipf returns n random references over pages distinct pages with a
// Zipf(s) popularity (s > 1; page 0 is the hottest), all AccessRandom.
func Zipf(name string, pages, n int, s float64, seed uint64) Trace {
	r := rand.New(rand.NewPCG(seed, seed^0x5eed))
	z := rand.NewZipf(r, s, 1, uint64(pages-1))
	refs := make([]Ref, n)
	for i := range refs {
		refs[i] = Ref{Page: uint32(z.Uint64()), Access: cache.AccessRandom}
	}
	return Trace{Name: name, Pages: pages, Refs: refs}
}

// Loop returns n references looping sequentially over pages pages (a file
// read again and again), all AccessSequential.
func Loop(name string, pages, n int) Trace {
	refs := make([]Ref, n)
	for i := range refs {
		refs[i] = Ref{Page: uint32(i % pages), Access: cache.AccessSequential}
	}
	return Trace{Name: name, Pages: pages, Refs: refs}
}

// Mixed returns n references alternating runs of run Zipf(s) random
// references over a working set of hot pages [0, hot) with runs of run
// sequential references that loop over a file of scan pages [hot,
// hot+scan), each run continuing where the last stopped: a random reader
// sharing the cache with a long scan.
func Mixed(name string, hot, scan, run, n int, s float64, seed uint64) Trace {
	r := rand.New(rand.NewPCG(seed, seed^0x5eed))
	z := rand.NewZipf(r, s, 1, uint64(hot-1))
	refs := make([]Ref, 0, n)
	cursor := 0
	for len(refs) < n {
		for i := 0; i < run && len(refs) < n; i++ {
			refs = append(refs, Ref{Page: uint32(z.Uint64()), Access: cache.AccessRandom})
		}
		for i := 0; i < run && len(refs) < n; i++ {
			refs = append(refs, Ref{Page: uint32(hot + cursor), Access: cache.AccessSequential})
			cursor = (cursor + 1) % scan
		}
	}
	return Trace{Name: name, Pages: hot + scan, Refs: refs}
}

// DefaultTraces returns the three comparison traces, one million
// references each over 100k pages: random Zipf(1.1); a loop over the
// whole file; and a Zipf(1.1) working set of 10k pages interleaved (runs
// of 1000) with a loop over a 90k-page file flagged sequential.
func DefaultTraces() []Trace {
	const pages, n = 100_000, 1_000_000
	return []Trace{
		Zipf("zipf", pages, n, 1.1, 1),
		Loop("scan", pages, n),
		Mixed("mixed", 10_000, pages-10_000, 1000, n, 1.1, 2),
	}
}

// DefaultFractions returns the cache sizes of the comparison, as fractions
// of a trace's distinct pages.
func DefaultFractions() []float64 { return []float64{0.01, 0.05, 0.10, 0.25} }
