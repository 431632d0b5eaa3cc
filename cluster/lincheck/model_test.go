package lincheck

import (
	"math"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"golang.org/x/sys/unix"
)

// op builds a history entry for the model tests.
func op(client int, in Input, call int64, out Output, ret int64) porcupine.Operation {
	return porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret}
}

func TestModelAcceptsSequentialSemantics(t *testing.T) {
	h := []porcupine.Operation{
		op(0, Input{Kind: Create, Dir: "d", Name: 0, Mode: 0o644}, 0, Output{}, 1),
		op(0, Input{Kind: Create, Dir: "d", Name: 0, Mode: 0o600}, 2, Output{Errno: unix.EEXIST}, 3),
		op(0, Input{Kind: Truncate, Dir: "d", Name: 0, Size: 3000}, 4, Output{}, 5),
		op(0, Input{Kind: Rename, Dir: "d", Name: 0, To: 1}, 6, Output{}, 7),
		op(0, Input{Kind: Stat, Dir: "d", Name: 0}, 8, Output{Errno: unix.ENOENT}, 9),
		op(0, Input{Kind: Stat, Dir: "d", Name: 1}, 10, Output{Mode: 0o644, Size: 3000}, 11),
		op(0, Input{Kind: Chmod, Dir: "d", Name: 1, Mode: 0o600}, 12, Output{}, 13),
		op(0, Input{Kind: Rename, Dir: "d", Name: 1, To: 1}, 14, Output{Errno: unix.EEXIST}, 15),
		op(0, Input{Kind: Stat, Dir: "d", Name: 1}, 16, Output{Mode: 0o600, Size: 3000}, 17),
		op(0, Input{Kind: Unlink, Dir: "d", Name: 1}, 18, Output{}, 19),
		op(0, Input{Kind: Unlink, Dir: "d", Name: 1}, 20, Output{Errno: unix.ENOENT}, 21),
		// Another directory is independent.
		op(1, Input{Kind: Stat, Dir: "e", Name: 0}, 0, Output{Errno: unix.ENOENT}, 21),
	}
	if res, err := Check(h, 10*time.Second, ""); res != porcupine.Ok {
		t.Fatalf("a sequential history is not linearizable: %v", err)
	}
}

func TestModelConcurrentOpsMayOrderEitherWay(t *testing.T) {
	// A stat concurrent with the create may see it or not.
	for _, seen := range []Output{{Errno: unix.ENOENT}, {Mode: 0o644}} {
		h := []porcupine.Operation{
			op(0, Input{Kind: Create, Dir: "d", Mode: 0o644}, 0, Output{}, 10),
			op(1, Input{Kind: Stat, Dir: "d"}, 5, seen, 6),
		}
		if res, err := Check(h, 10*time.Second, ""); res != porcupine.Ok {
			t.Errorf("stat %+v concurrent with create rejected: %v", seen, err)
		}
	}
}

func TestUnknownOutcomeMayApplyOrNot(t *testing.T) {
	unknownCreate := op(0, Input{Kind: Create, Dir: "d", Mode: 0o644}, 0, Output{Unknown: true}, math.MaxInt64)
	for name, later := range map[string]Output{
		"applied":     {Mode: 0o644},
		"not applied": {Errno: unix.ENOENT},
	} {
		h := []porcupine.Operation{unknownCreate, op(1, Input{Kind: Stat, Dir: "d"}, 100, later, 101)}
		if res, err := Check(h, 10*time.Second, ""); res != porcupine.Ok {
			t.Errorf("%s: rejected: %v", name, err)
		}
	}
	// But once seen, a file created by an unknown op cannot vanish.
	h := []porcupine.Operation{unknownCreate,
		op(1, Input{Kind: Stat, Dir: "d"}, 100, Output{Mode: 0o644}, 101),
		op(1, Input{Kind: Stat, Dir: "d"}, 102, Output{Errno: unix.ENOENT}, 103),
	}
	if res, _ := Check(h, 10*time.Second, ""); res != porcupine.Illegal {
		t.Errorf("a file seen and then gone without an unlink: %v, want Illegal", res)
	}
}

func TestStaleReadIsAViolation(t *testing.T) {
	h := []porcupine.Operation{
		op(0, Input{Kind: Create, Dir: "d", Name: 2, Mode: 0o644}, 0, Output{}, 10),
		op(1, Input{Kind: Unlink, Dir: "d", Name: 1}, 0, Output{Errno: unix.ENOENT}, 30),
		op(0, Input{Kind: Stat, Dir: "d", Name: 2}, 20, Output{Mode: 0o644}, 25),
	}
	if res, err := Check(h, 10*time.Second, ""); res != porcupine.Ok {
		t.Fatalf("base history rejected: %v", err)
	}
	broken, how := InjectStaleRead(h)
	t.Log(how)
	if len(broken) != len(h)+1 {
		t.Fatalf("expected the stale read injected into the real history, got %d ops", len(broken))
	}
	if res, _ := Check(broken, 10*time.Second, ""); res != porcupine.Illegal {
		t.Fatalf("history with a stale read: %v, want Illegal", res)
	}
	// With only a concurrent removal there is nothing safe to inject into:
	// the synthetic fallback must still be caught.
	h = []porcupine.Operation{
		op(0, Input{Kind: Create, Dir: "d", Mode: 0o644}, 0, Output{}, 10),
		op(1, Input{Kind: Unlink, Dir: "d"}, 5, Output{Unknown: true}, math.MaxInt64),
	}
	broken, how = InjectStaleRead(h)
	t.Log(how)
	if res, _ := Check(broken, 10*time.Second, ""); res != porcupine.Illegal {
		t.Fatalf("synthetic stale read: %v, want Illegal", res)
	}
}

// TestRenameNoReplaceEEXIST: the kernel decides a RENAME_NOREPLACE's
// EEXIST from two lookups at different instants, so EEXIST is legal
// where "to" exists, even when "from" is already gone (another node's
// rename(c, b) between the lookups), but never where "to" cannot exist.
func TestRenameNoReplaceEEXIST(t *testing.T) {
	create := func(c, name int, call, ret int64) porcupine.Operation {
		return op(c, Input{Kind: Create, Dir: "d", Name: name, Mode: 0o644}, call, Output{}, ret)
	}
	for _, tc := range []struct {
		name string
		h    []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"concurrent rename(c, b) moved c onto b", []porcupine.Operation{
			create(0, 2, 0, 1),
			op(0, Input{Kind: Rename, Dir: "d", Name: 2, To: 1}, 10, Output{}, 20),
			op(1, Input{Kind: Rename, Dir: "d", Name: 2, To: 1}, 15, Output{Errno: unix.EEXIST}, 25),
		}, porcupine.Ok},
		{"to never existed", []porcupine.Operation{
			create(0, 2, 0, 1),
			op(1, Input{Kind: Rename, Dir: "d", Name: 2, To: 1}, 15, Output{Errno: unix.EEXIST}, 25),
		}, porcupine.Illegal},
		{"to gone before the rename began", []porcupine.Operation{
			create(0, 1, 0, 1),
			create(0, 2, 2, 3),
			op(0, Input{Kind: Unlink, Dir: "d", Name: 1}, 4, Output{}, 5),
			op(1, Input{Kind: Rename, Dir: "d", Name: 2, To: 1}, 10, Output{Errno: unix.EEXIST}, 20),
		}, porcupine.Illegal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if res, err := Check(tc.h, 10*time.Second, ""); res != tc.want {
				t.Fatalf("got %v (%v), want %v", res, err, tc.want)
			}
		})
	}
}
