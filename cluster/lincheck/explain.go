package lincheck

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/anishathalye/porcupine"
)

// Explain narrows a non-linearizable history down for a human: for the
// first directory that is not linearizable it finds the earliest time T
// such that the history cut at T (operations that returned by T as they
// returned, operations still running at T as of unknown outcome) is
// already illegal, and lists the operation that returned at T with every
// operation on the same names in the second before it. It returns "" if
// the history is linearizable (or the check times out).
func Explain(history []porcupine.Operation, timeout time.Duration) string {
	model := Model()
	for _, part := range model.Partition(history) {
		if porcupine.CheckOperationsTimeout(model, part, timeout) != porcupine.Illegal {
			continue
		}
		var rets []int64
		for _, op := range part {
			if op.Return != math.MaxInt64 {
				rets = append(rets, op.Return)
			}
		}
		sort.Slice(rets, func(i, j int) bool { return rets[i] < rets[j] })
		i := sort.Search(len(rets), func(i int) bool {
			return porcupine.CheckOperationsTimeout(model, cut(part, rets[i]), timeout) == porcupine.Illegal
		})
		if i == len(rets) {
			return "the history is illegal only with its unknown-outcome operations (no prefix is)"
		}
		t := rets[i]
		var last porcupine.Operation
		names := map[int]bool{}
		for _, op := range part {
			if op.Return == t {
				last = op
				in := op.Input.(Input)
				names[in.Name] = true
				if in.Kind == Rename {
					names[in.To] = true
				}
			}
		}
		var b strings.Builder
		in := last.Input.(Input)
		fmt.Fprintf(&b, "directory %s is linearizable up to %v; the first operation that cannot be placed returned then:\n  %s\n",
			in.Dir, time.Duration(t), describeTimed(last))
		fmt.Fprintf(&b, "operations on the same names in the 1s before it:\n")
		var near []porcupine.Operation
		for _, op := range part {
			o := op.Input.(Input)
			if (names[o.Name] || (o.Kind == Rename && names[o.To])) && op.Call <= t && (op.Return >= t-int64(time.Second)) {
				near = append(near, op)
			}
		}
		sort.Slice(near, func(i, j int) bool { return near[i].Call < near[j].Call })
		for _, op := range near {
			fmt.Fprintf(&b, "  %s\n", describeTimed(op))
		}
		return b.String()
	}
	return ""
}

// cut is the history as known at time t: operations that returned by t as
// they are, operations called by t but not yet returned as unknown, later
// operations left out.
func cut(history []porcupine.Operation, t int64) []porcupine.Operation {
	var out []porcupine.Operation
	for _, op := range history {
		switch {
		case op.Call > t:
		case op.Return <= t:
			out = append(out, op)
		case op.Input.(Input).Kind == Stat:
			// A read still running observed nothing yet.
		default:
			op.Output, op.Return = Output{Unknown: true}, math.MaxInt64
			out = append(out, op)
		}
	}
	return out
}

// describeTimed renders an operation with its interval and client.
func describeTimed(op porcupine.Operation) string {
	ret := "inf"
	if op.Return != math.MaxInt64 {
		ret = time.Duration(op.Return).String()
	}
	return fmt.Sprintf("[%v .. %s] client %d (%v): %s", time.Duration(op.Call), ret, op.ClientId, op.Metadata, describeOperation(op.Input, op.Output))
}

// WriteHistory writes a history as JSON (one object per operation) for
// later analysis.
func WriteHistory(path string, history []porcupine.Operation) error {
	type jsonOp struct {
		Client int    `json:"client"`
		Node   any    `json:"node"`
		Input  Input  `json:"input"`
		Output Output `json:"output"`
		Call   int64  `json:"call"`
		Return int64  `json:"return"`
	}
	ops := make([]jsonOp, len(history))
	for i, op := range history {
		ops[i] = jsonOp{op.ClientId, op.Metadata, op.Input.(Input), op.Output.(Output), op.Call, op.Return}
	}
	b, err := json.MarshalIndent(ops, "", " ")
	if err != nil {
		return fmt.Errorf("encode history: %w", err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("write history: %w", err)
	}
	return nil
}
