package policysim

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/datenlord/datenlord-go/cache"
)

// BeladyName is the Policy of the rows holding Belady's optimum.
const BeladyName = "belady"

// Row is one cell of the comparison: a policy's hit ratio on a trace at
// one cache size.
type Row struct {
	Trace      string
	Fraction   float64 // cache size as a fraction of the trace's distinct pages
	CachePages int
	Policy     string // a cache.PolicyNames() name, or BeladyName
	Result
}

// Run replays every trace at every cache size (a fraction of the trace's
// distinct pages, at least one page) through every named policy
// (cache.NewPolicyFactory names) and Belady's optimum, in that order.
func Run(traces []Trace, fractions []float64, policies []string) ([]Row, error) {
	factories := make([]func() cache.Policy, len(policies))
	for i, name := range policies {
		f, err := cache.NewPolicyFactory(name)
		if err != nil {
			return nil, fmt.Errorf("policysim: %w", err)
		}
		factories[i] = f
	}
	var rows []Row
	for _, t := range traces {
		for _, frac := range fractions {
			capacity := max(1, int(frac*float64(t.Pages)))
			for i, name := range policies {
				res, err := Simulate(t, factories[i](), capacity)
				if err != nil {
					return nil, fmt.Errorf("policysim: policy %s: %w", name, err)
				}
				rows = append(rows, Row{Trace: t.Name, Fraction: frac, CachePages: capacity, Policy: name, Result: res})
			}
			rows = append(rows, Row{Trace: t.Name, Fraction: frac, CachePages: capacity, Policy: BeladyName, Result: Belady(t, capacity)})
		}
	}
	return rows, nil
}

// WriteTable writes rows as a table of hit ratios (percent): one line per
// trace and cache size, one column per policy in first-seen order, Belady
// where present.
func WriteTable(w io.Writer, rows []Row) error {
	type lineKey struct {
		trace string
		frac  float64
	}
	var cols []string
	seenCol := map[string]bool{}
	var lines []lineKey
	seenLine := map[lineKey]bool{}
	cells := map[lineKey]map[string]Row{}
	for _, r := range rows {
		if !seenCol[r.Policy] {
			seenCol[r.Policy] = true
			cols = append(cols, r.Policy)
		}
		k := lineKey{r.Trace, r.Fraction}
		if !seenLine[k] {
			seenLine[k] = true
			lines = append(lines, k)
			cells[k] = map[string]Row{}
		}
		cells[k][r.Policy] = r
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "trace\tcache\tpages\t%s\t\n", strings.Join(cols, "\t"))
	for _, k := range lines {
		var pages int
		var b strings.Builder
		for _, c := range cols {
			r, ok := cells[k][c]
			if !ok {
				b.WriteString("-\t")
				continue
			}
			pages = r.CachePages
			fmt.Fprintf(&b, "%.2f\t", 100*r.HitRatio())
		}
		fmt.Fprintf(tw, "%s\t%g%%\t%d\t%s\n", k.trace, 100*k.frac, pages, b.String())
	}
	return tw.Flush()
}
