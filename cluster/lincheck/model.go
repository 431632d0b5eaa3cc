package lincheck

import (
	"fmt"
	"hash/fnv"
	"strings"

	"github.com/anishathalye/porcupine"
	"golang.org/x/sys/unix"
)

// names is the key space of one directory: the clients use one-letter
// file names, these letters.
const names = "abc"

// numNames is the size of the key space of one directory.
const numNames = len(names)

// Name returns the file name with index i (0 <= i < NumNames).
func Name(i int) string { return names[i : i+1] }

// NumNames is the number of file names per directory.
const NumNames = numNames

// Kind is the kind of an operation.
type Kind uint8

// The operations of the model.
const (
	Create Kind = iota + 1
	Unlink
	Rename
	Chmod
	Truncate
	Stat
)

// String names the kind.
func (k Kind) String() string {
	switch k {
	case Create:
		return "create"
	case Unlink:
		return "unlink"
	case Rename:
		return "rename"
	case Chmod:
		return "chmod"
	case Truncate:
		return "truncate"
	case Stat:
		return "stat"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Input is an operation as called: porcupine's Operation.Input.
type Input struct {
	Kind Kind
	Dir  string // the directory: the partition key
	Name int    // index of the file name, see Name
	To   int    // rename's target, an index like Name
	Mode uint32 // create (already masked with the umask) and chmod
	Size int64  // truncate
}

// Output is an operation's outcome: porcupine's Operation.Output.
type Output struct {
	// Unknown: the operation may or may not have taken effect.
	Unknown bool
	// Errno is 0 on success, or unix.ENOENT / unix.EEXIST.
	Errno unix.Errno
	// Mode and Size are what a successful stat saw.
	Mode uint32
	Size int64
}

// file is the model state of one name.
type file struct {
	Exists bool
	Mode   uint32
	Size   int64
}

// dirState is the model state of one directory. An array, so states
// compare with == and steps copy.
type dirState [numNames]file

// step applies in to s and returns the new state and the outcome a
// correct file system gives.
func step(s dirState, in Input) (dirState, Output) {
	f := s[in.Name]
	switch in.Kind {
	case Create:
		if f.Exists {
			return s, Output{Errno: unix.EEXIST}
		}
		s[in.Name] = file{Exists: true, Mode: in.Mode}
	case Unlink:
		if !f.Exists {
			return s, Output{Errno: unix.ENOENT}
		}
		s[in.Name] = file{}
	case Rename:
		if !f.Exists {
			return s, Output{Errno: unix.ENOENT}
		}
		if s[in.To].Exists { // RENAME_NOREPLACE; also rename(x, x)
			return s, Output{Errno: unix.EEXIST}
		}
		s[in.To] = f
		s[in.Name] = file{}
	case Chmod:
		if !f.Exists {
			return s, Output{Errno: unix.ENOENT}
		}
		s[in.Name].Mode = in.Mode
	case Truncate:
		if !f.Exists {
			return s, Output{Errno: unix.ENOENT}
		}
		s[in.Name].Size = in.Size
	case Stat:
		if !f.Exists {
			return s, Output{Errno: unix.ENOENT}
		}
		return s, Output{Mode: f.Mode, Size: f.Size}
	}
	return s, Output{}
}

// Model is the porcupine model of the file system's metadata, partitioned
// by directory.
func Model() porcupine.Model {
	return porcupine.Model{
		Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
			byDir := map[string][]porcupine.Operation{}
			var order []string
			for _, op := range history {
				d := op.Input.(Input).Dir
				if _, ok := byDir[d]; !ok {
					order = append(order, d)
				}
				byDir[d] = append(byDir[d], op)
			}
			out := make([][]porcupine.Operation, 0, len(order))
			for _, d := range order {
				out = append(out, byDir[d])
			}
			return out
		},
		Init: func() interface{} { return dirState{} },
		Step: func(state, input, output interface{}) (bool, interface{}) {
			in, out := input.(Input), output.(Output)
			next, want := step(state.(dirState), in)
			if out.Unknown {
				return true, next
			}
			if in.Kind == Rename && out == (Output{Errno: unix.EEXIST}) && want != out {
				// The kernel answers RENAME_NOREPLACE with EEXIST from its
				// own lookups of from and to, made one after the other
				// (each a FUSE LOOKUP with --entry-timeout 0), and sends
				// no rename at all: to existing at this point is what the
				// file system was asked, whether or not from still did.
				s := state.(dirState)
				return s[in.To].Exists, s
			}
			return out == want, next
		},
		Hash: func(state interface{}) uint64 {
			h := fnv.New64a()
			fmt.Fprint(h, state.(dirState))
			return h.Sum64()
		},
		DescribeOperation: describeOperation,
		DescribeState: func(state interface{}) string {
			var parts []string
			for i, f := range state.(dirState) {
				if f.Exists {
					parts = append(parts, fmt.Sprintf("%s:%o/%d", Name(i), f.Mode, f.Size))
				}
			}
			return "{" + strings.Join(parts, " ") + "}"
		},
	}
}

// describeOperation renders an operation for porcupine's visualization.
func describeOperation(input, output interface{}) string {
	in, out := input.(Input), output.(Output)
	var call string
	switch in.Kind {
	case Create:
		call = fmt.Sprintf("create(%s/%s, %o)", in.Dir, Name(in.Name), in.Mode)
	case Rename:
		call = fmt.Sprintf("rename(%s/%s, %s)", in.Dir, Name(in.Name), Name(in.To))
	case Chmod:
		call = fmt.Sprintf("chmod(%s/%s, %o)", in.Dir, Name(in.Name), in.Mode)
	case Truncate:
		call = fmt.Sprintf("truncate(%s/%s, %d)", in.Dir, Name(in.Name), in.Size)
	default:
		call = fmt.Sprintf("%s(%s/%s)", in.Kind, in.Dir, Name(in.Name))
	}
	switch {
	case out.Unknown:
		return call + " -> unknown"
	case out.Errno != 0:
		return call + " -> " + unix.ErrnoName(out.Errno)
	case in.Kind == Stat:
		return fmt.Sprintf("%s -> %o/%d", call, out.Mode, out.Size)
	}
	return call + " -> ok"
}
