package policysim

import (
	"bytes"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"github.com/datenlord/datenlord-go/cache"
)

// TestPolicyTable replays the default traces through every registered
// policy and Belady, prints the hit-ratio table and checks the properties
// the policies are chosen for.
func TestPolicyTable(t *testing.T) {
	rows, err := Run(DefaultTraces(), DefaultFractions(), cache.PolicyNames())
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := WriteTable(&buf, rows); err != nil {
		t.Fatal(err)
	}
	t.Logf("hit ratio %%, 1M references per trace, 100k distinct pages:\n%s", buf.String())

	type cell struct {
		trace string
		frac  float64
	}
	ratio := map[cell]map[string]float64{}
	for _, r := range rows {
		c := cell{r.Trace, r.Fraction}
		if ratio[c] == nil {
			ratio[c] = map[string]float64{}
		}
		ratio[c][r.Policy] = r.HitRatio()
	}
	better := func(c cell, a, b string) {
		t.Helper()
		if ratio[c][a] <= ratio[c][b] {
			t.Errorf("%s at %g%%: %s %.4f does not beat %s %.4f", c.trace, 100*c.frac, a, ratio[c][a], b, ratio[c][b])
		}
	}
	for c, byPolicy := range ratio {
		for name, hr := range byPolicy {
			if hr > byPolicy[BeladyName] {
				t.Errorf("%s at %g%%: %s %.4f beats Belady %.4f", c.trace, 100*c.frac, name, hr, byPolicy[BeladyName])
			}
		}
		switch c.trace {
		case "mixed": // scans must not flush the random working set
			better(c, cache.PolicyAuto, cache.PolicyLRU)
			better(c, cache.PolicyS3FIFO, cache.PolicyLRU)
		case "scan": // a loop larger than the cache: LRU never hits
			better(c, cache.PolicyMRU, cache.PolicyLRU)
			better(c, cache.PolicyAuto, cache.PolicyLRU)
		case "zipf": // frequency beats recency
			better(c, cache.PolicyS3FIFO, cache.PolicyLRU)
			better(c, cache.PolicyAuto, cache.PolicyLRU)
		}
	}
}

// bruteOptimum returns the most hits any demand-paging policy gets on refs
// with capacity pages, trying every eviction choice.
func bruteOptimum(refs []uint32, capacity int, resident []uint32) int {
	if len(refs) == 0 {
		return 0
	}
	p := refs[0]
	for _, q := range resident {
		if q == p {
			return 1 + bruteOptimum(refs[1:], capacity, resident)
		}
	}
	if len(resident) < capacity {
		return bruteOptimum(refs[1:], capacity, append(resident[:len(resident):len(resident)], p))
	}
	best := 0
	for i := range resident {
		next := append([]uint32(nil), resident...)
		next[i] = p
		best = max(best, bruteOptimum(refs[1:], capacity, next))
	}
	return best
}

func TestBeladyIsOptimal(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	for range 200 {
		n, pages, capacity := 4+r.IntN(10), 2+r.IntN(5), 1+r.IntN(3)
		tr := Trace{Name: "tiny", Pages: pages}
		refs := make([]uint32, n)
		for i := range refs {
			refs[i] = uint32(r.IntN(pages))
			tr.Refs = append(tr.Refs, Ref{Page: refs[i]})
		}
		if got, want := Belady(tr, capacity).Hits, bruteOptimum(refs, capacity, nil); got != want {
			t.Fatalf("trace %v capacity %d: Belady %d hits, optimum %d", refs, capacity, got, want)
		}
	}
}

func TestSimulateLRU(t *testing.T) {
	// 0 1 2 0 3 0 1 in two LRU slots: 2 evicts 0, 0 evicts 1, 3 evicts 2,
	// 0 hits, 1 evicts 3.
	tr := Trace{Name: "tiny", Pages: 4}
	for _, p := range []uint32{0, 1, 2, 0, 3, 0, 1} {
		tr.Refs = append(tr.Refs, Ref{Page: p})
	}
	res, err := Simulate(tr, cache.NewLRU(), 2)
	if err != nil {
		t.Fatal(err)
	}
	if res.Hits != 1 || res.Accesses != 7 {
		t.Fatalf("LRU: %+v, want 1 hit of 7", res)
	}
	if b := Belady(tr, 2); b.Hits != 2 { // keep 0 throughout: hits on both later 0s
		t.Fatalf("Belady: %+v, want 2 hits", b)
	}
}

// brokenPolicy offers a victim from an empty cache.
type brokenPolicy struct{ cache.LRU }

func (brokenPolicy) Victim() (int32, bool) { return 0, false }

func TestSimulateRejectsBrokenPolicy(t *testing.T) {
	tr := Loop("loop", 10, 20)
	if _, err := Simulate(tr, &brokenPolicy{LRU: *cache.NewLRU()}, 4); err == nil {
		t.Fatal("policy without a victim from a full cache accepted")
	}
}

func TestTracesDeterministic(t *testing.T) {
	a, b := Mixed("m", 100, 1000, 10, 5000, 1.2, 9), Mixed("m", 100, 1000, 10, 5000, 1.2, 9)
	for i := range a.Refs {
		if a.Refs[i] != b.Refs[i] {
			t.Fatalf("reference %d differs", i)
		}
	}
	seq := 0
	for _, r := range a.Refs {
		if int(r.Page) >= a.Pages {
			t.Fatalf("page %d outside %d", r.Page, a.Pages)
		}
		if r.Access == cache.AccessSequential {
			seq++
		}
	}
	if seq != len(a.Refs)/2 {
		t.Fatalf("%d sequential references of %d", seq, len(a.Refs))
	}
}

func TestRunUnknownPolicy(t *testing.T) {
	_, err := Run([]Trace{Loop("l", 10, 10)}, []float64{0.5}, []string{"nope"})
	if err == nil || !strings.Contains(err.Error(), "lru") {
		t.Fatalf("error %v does not list the valid policies", err)
	}
}

func ExampleWriteTable() {
	tr := Loop("loop", 100, 1000)
	rows, err := Run([]Trace{tr}, []float64{0.1}, []string{"lru", "mru"})
	if err != nil {
		panic(err)
	}
	_ = WriteTable(os.Stdout, rows)
	// Output:
	// trace  cache  pages   lru   mru  belady
	//    loop    10%     10  0.00  9.00    9.00
}
