package lincheck

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
	"golang.org/x/sys/unix"
)

// Recorder collects the operations of all clients into one history. It is
// safe for concurrent use.
type Recorder struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
	ids   int
}

// NewRecorder returns an empty recorder whose clock starts now.
func NewRecorder() *Recorder { return &Recorder{start: time.Now()} }

// Start is when the recorder's clock started: Call and Return times are
// nanoseconds since then.
func (r *Recorder) Start() time.Time { return r.start }

// now is the recorder's clock: nanoseconds since it was created (the
// monotonic clock, shared by all clients of the test process).
func (r *Recorder) now() int64 { return int64(time.Since(r.start)) }

// newClientID returns a fresh porcupine client id.
func (r *Recorder) newClientID() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ids++
	return r.ids - 1
}

// add appends one operation.
func (r *Recorder) add(op porcupine.Operation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ops = append(r.ops, op)
}

// History returns a copy of the recorded operations.
func (r *Recorder) History() []porcupine.Operation {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]porcupine.Operation(nil), r.ops...)
}

// Stats counts the operations of a history by outcome.
type Stats struct {
	Ops, Unknown, Errors, Reads int
}

// String renders the counts for the test log.
func (s Stats) String() string {
	return fmt.Sprintf("%d ops (%d stats, %d ENOENT/EEXIST, %d unknown outcome)", s.Ops, s.Reads, s.Errors, s.Unknown)
}

// Count counts a history's operations.
func Count(history []porcupine.Operation) Stats {
	var s Stats
	for _, op := range history {
		s.Ops++
		out := op.Output.(Output)
		switch {
		case out.Unknown:
			s.Unknown++
		case out.Errno != 0:
			s.Errors++
		}
		if op.Input.(Input).Kind == Stat {
			s.Reads++
		}
	}
	return s
}

// Client performs operations on one mount and records them. One client
// runs one operation at a time; it is not safe for concurrent use.
type Client struct {
	rec     *Recorder
	root    string // the mount point
	dirs    []string
	id      int
	umask   uint32
	timeout time.Duration
	rng     *rand.Rand
	label   string
	// fds are open descriptors of dirs on the live mount, or nil. Every
	// operation goes through them (/proc/self/fd/N/name), so that after
	// the node dies and its dead mount is lazily unmounted the client
	// gets ENOTCONN instead of writing into the bare mount point.
	fds []int
}

// NewClient returns a client of rec that works in dirs (relative to
// mount, which must exist) and gives up on an operation after timeout.
// label names the client in the visualization (e.g. the node's id).
func NewClient(rec *Recorder, mount string, dirs []string, timeout time.Duration, seed int64, label string) (*Client, error) {
	umask, err := processUmask()
	if err != nil {
		return nil, err
	}
	return &Client{rec: rec, root: mount, dirs: dirs, id: rec.newClientID(), umask: umask,
		timeout: timeout, rng: rand.New(rand.NewSource(seed)), label: label}, nil
}

// processUmask reads the umask from /proc without changing it (umask(2)
// would race with other goroutines creating files).
func processUmask() (uint32, error) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("read umask: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32)
			if err != nil {
				return 0, fmt.Errorf("parse umask %q: %w", v, err)
			}
			return uint32(m), nil
		}
	}
	return 0, errors.New("no Umask line in /proc/self/status")
}

// Random returns a random operation on one of the client's directories.
func (c *Client) Random() Input {
	in := Input{Dir: c.dirs[c.rng.Intn(len(c.dirs))], Name: c.rng.Intn(numNames)}
	mode := [...]uint32{0o600, 0o640, 0o644, 0o604}[c.rng.Intn(4)]
	switch r := c.rng.Intn(100); {
	case r < 20:
		in.Kind, in.Mode = Create, mode&^c.umask
	case r < 32:
		in.Kind = Unlink
	case r < 47:
		in.Kind, in.To = Rename, c.rng.Intn(numNames)
	case r < 57:
		in.Kind, in.Mode = Chmod, mode
	case r < 67:
		in.Kind, in.Size = Truncate, int64(c.rng.Intn(4)*1000)
	default:
		in.Kind = Stat
	}
	return in
}

// Do performs one operation on the mount and records it by the rules in
// the package documentation. It returns the outcome and the error the
// system call returned (nil for ENOENT/EEXIST; a timeout error if the
// client gave up).
func (c *Client) Do(in Input) (Output, error) {
	if in.Kind == Create {
		in.Mode &^= c.umask
	}
	if err := c.openDirs(); err != nil {
		return Output{Unknown: true}, err // nothing was called: not recorded
	}
	dirFD := c.fds[slices.Index(c.dirs, in.Dir)]
	done := make(chan result, 1)
	call := c.rec.now()
	go func() {
		out, err := c.exec(dirFD, in)
		done <- result{out, err, c.rec.now()}
	}()
	var res result
	select {
	case res = <-done:
	case <-time.After(c.timeout):
		res = result{err: fmt.Errorf("%s: no answer within %s: %w", describeOperation(in, Output{Unknown: true}), c.timeout, unix.ETIMEDOUT)}
		defer func() { c.id = c.rec.newClientID() }() // the abandoned call may still be running
	}
	op := porcupine.Operation{ClientId: c.id, Input: in, Call: call, Output: res.out, Return: res.ret, Metadata: c.label}
	if res.err != nil {
		if isDeadMount(res.err) {
			c.closeDirs()
		}
		if in.Kind == Stat {
			return Output{Unknown: true}, res.err // observed nothing: not recorded
		}
		op.Output, op.Return = Output{Unknown: true}, math.MaxInt64
	}
	c.rec.add(op)
	return op.Output.(Output), res.err
}

// result is an operation's outcome as the goroutine that ran it saw it.
type result struct {
	out Output
	err error // an error other than ENOENT/EEXIST
	ret int64
}

// openDirs opens the client's directories on the mount unless they are
// open; it fails unless the mount point is a live FUSE mount.
func (c *Client) openDirs() error {
	if c.fds != nil {
		return nil
	}
	var fds []int
	for _, d := range c.dirs {
		path := filepath.Join(c.root, d)
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			closeAll(fds)
			return fmt.Errorf("open %s: %w", path, err)
		}
		fds = append(fds, fd)
		var st unix.Statfs_t
		if err := unix.Fstatfs(fd, &st); err != nil || st.Type != fuseSuperMagic {
			closeAll(fds)
			return fmt.Errorf("%s is not on a live FUSE mount (statfs: %v)", path, err)
		}
	}
	c.fds = fds
	return nil
}

// closeDirs closes the directory descriptors (of a dead mount).
func (c *Client) closeDirs() {
	closeAll(c.fds)
	c.fds = nil
}

// Close releases the client's descriptors. An operation abandoned after
// its timeout may still hold one until the mount answers or dies.
func (c *Client) Close() { c.closeDirs() }

// closeAll closes descriptors, ignoring errors (directories: nothing to
// flush).
func closeAll(fds []int) {
	for _, fd := range fds {
		_ = unix.Close(fd)
	}
}

// fuseSuperMagic is statfs(2)'s f_type of a FUSE file system.
const fuseSuperMagic = 0x65735546

// isDeadMount reports whether err is what a dead FUSE mount answers.
func isDeadMount(err error) bool {
	return errors.Is(err, unix.ENOTCONN) || errors.Is(err, unix.ECONNABORTED)
}

// exec runs the system calls of one operation in the directory open as
// dirFD.
func (c *Client) exec(dirFD int, in Input) (Output, error) {
	dir := "/proc/self/fd/" + strconv.Itoa(dirFD)
	path := dir + "/" + Name(in.Name)
	var err error
	switch in.Kind {
	case Create:
		var fd int
		fd, err = unix.Open(path, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, in.Mode)
		if err == nil {
			err = unix.Close(fd)
		}
	case Unlink:
		err = unix.Unlink(path)
	case Rename:
		// RENAME_NOREPLACE, not plain rename: the kernel answers a plain
		// rename(b, c) with success and no request at all when its dentries
		// for b and c name the same inode, which two lookups racing another
		// node's rename(b, c) can make them do for a moment. The result is
		// correct for a POSIX file system but cannot be placed in this
		// model's history. With NOREPLACE the kernel says EEXIST there.
		err = unix.Renameat2(unix.AT_FDCWD, path, unix.AT_FDCWD, dir+"/"+Name(in.To), unix.RENAME_NOREPLACE)
	case Chmod:
		err = unix.Chmod(path, in.Mode)
	case Truncate:
		err = unix.Truncate(path, in.Size)
	case Stat:
		var st unix.Stat_t
		if err = unix.Stat(path, &st); err == nil {
			return Output{Mode: st.Mode & 0o7777, Size: st.Size}, nil
		}
	}
	var errno unix.Errno
	if errors.As(err, &errno) && (errno == unix.ENOENT || errno == unix.EEXIST) {
		return Output{Errno: errno}, nil
	}
	if err != nil {
		return Output{}, fmt.Errorf("%s on %s: %w", in.Kind, filepath.Join(c.root, in.Dir, Name(in.Name)), err)
	}
	return Output{}, nil
}

// Run performs random operations until ctx is done, pausing think between
// them, and returns how many failed with an unknown outcome.
func (c *Client) Run(ctx context.Context, think time.Duration) (unknown int) {
	for ctx.Err() == nil {
		if out, _ := c.Do(c.Random()); out.Unknown {
			unknown++
			// A failing node: do not spin.
			sleepCtx(ctx, 100*time.Millisecond)
		}
		sleepCtx(ctx, think)
	}
	return unknown
}

// sleepCtx sleeps for d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Check runs porcupine on history with the model. On a violation or a
// timeout it writes porcupine's HTML visualization to vizPath (if not "")
// and returns an error that says where.
func Check(history []porcupine.Operation, timeout time.Duration, vizPath string) (porcupine.CheckResult, error) {
	model := Model()
	res, info := porcupine.CheckOperationsVerbose(model, history, timeout)
	if res == porcupine.Ok {
		return res, nil
	}
	msg := fmt.Sprintf("porcupine: %s on %s", res, Count(history))
	if res == porcupine.Illegal {
		msg += "\n" + Explain(history, timeout)
	}
	if vizPath != "" {
		if err := WriteHistory(vizPath+".json", history); err != nil {
			msg += fmt.Sprintf(" (%v)", err)
		} else {
			msg += "; history in " + vizPath + ".json"
		}
		if err := porcupine.VisualizePath(model, info, vizPath); err != nil {
			msg += fmt.Sprintf(" (visualization: %v)", err)
		} else {
			msg += "; visualization in " + vizPath
		}
	}
	return res, errors.New(msg)
}

// InjectStaleRead returns history plus one stale read: a stat that
// returns ENOENT right after a successful create of the same file
// returned, such that no operation that could have removed the file
// overlaps. It picks the latest such create in the real history; if there
// is none it adds a synthetic create and stale stat in a directory of
// their own. The description says which.
func InjectStaleRead(history []porcupine.Operation) ([]porcupine.Operation, string) {
	sorted := append([]porcupine.Operation(nil), history...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Return > sorted[j].Return })
	maxID := 0
	var end int64
	for _, op := range history {
		maxID = max(maxID, op.ClientId)
		if op.Return != math.MaxInt64 {
			end = max(end, op.Return)
		}
	}
	for _, cr := range sorted {
		in, out := cr.Input.(Input), cr.Output.(Output)
		if in.Kind != Create || out.Unknown || out.Errno != 0 {
			continue
		}
		lo, hi := cr.Call, cr.Return+2
		clash := false
		for _, op := range history {
			o := op.Input.(Input)
			removes := o.Dir == in.Dir && o.Name == in.Name && (o.Kind == Unlink || (o.Kind == Rename && o.To != o.Name))
			if removes && op.Call <= hi && op.Return >= lo {
				clash = true
				break
			}
		}
		if clash {
			continue
		}
		stale := porcupine.Operation{ClientId: maxID + 1, Input: Input{Kind: Stat, Dir: in.Dir, Name: in.Name},
			Call: cr.Return + 1, Output: Output{Errno: unix.ENOENT}, Return: cr.Return + 2, Metadata: "stale"}
		return append(append([]porcupine.Operation(nil), history...), stale),
			fmt.Sprintf("stat(%s/%s) -> ENOENT injected 1ns after a create of it returned ok at %v", in.Dir, Name(in.Name), time.Duration(cr.Return))
	}
	dir := "stale-probe"
	create := porcupine.Operation{ClientId: maxID + 1, Input: Input{Kind: Create, Dir: dir, Mode: 0o644},
		Call: end + 1, Output: Output{}, Return: end + 2, Metadata: "stale"}
	stale := porcupine.Operation{ClientId: maxID + 1, Input: Input{Kind: Stat, Dir: dir},
		Call: end + 3, Output: Output{Errno: unix.ENOENT}, Return: end + 4, Metadata: "stale"}
	return append(append([]porcupine.Operation(nil), history...), create, stale),
		"no create in the history without a concurrent removal: a synthetic create + stale stat appended"
}
