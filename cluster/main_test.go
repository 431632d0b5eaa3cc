package cluster

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/datenlord/datenlord-go/cluster/clustertest"
)

func TestMain(m *testing.M) { clustertest.Main(m) }

// writeOpTimeout is how long a load client waits for one create + write
// + fsync + close before it records the operation as blocked. Longer than
// the failover bound, so that a pause is measured as a pause.
const writeOpTimeout = 15 * time.Second

// written is a file a load client created, wrote, fsynced and closed
// successfully: it must be present afterwards with this content.
type written struct {
	rel    string // path relative to the mount point
	sha256 string
	node   string
}

// opFailure is a load operation that did not succeed.
type opFailure struct {
	node, rel string
	err       error
	at        time.Duration // since the load started
}

// writeLoad runs load clients that each create files, write and fsync
// them, and records what succeeded, what failed and when.
type writeLoad struct {
	start time.Time

	mu          sync.Mutex
	done        []written
	failures    []opFailure
	completions []time.Duration // since start, of every successful op
	maxLatency  time.Duration
	pending     sync.WaitGroup // operations still running (abandoned included)
}

// newWriteLoad returns an empty load whose clock starts now.
func newWriteLoad() *writeLoad { return &writeLoad{start: time.Now()} }

// client writes files named <dir>/<name>-<i> on node's mount until ctx is
// done, one at a time, pausing think between them. An operation that does
// not finish within writeOpTimeout is recorded as a failure and left
// running.
func (w *writeLoad) client(ctx context.Context, node *clustertest.Node, dir, name string, size int, think time.Duration) {
	for i := 0; ctx.Err() == nil; i++ {
		rel := fmt.Sprintf("%s/%s-%05d", dir, name, i)
		data := make([]byte, size)
		_, _ = rand.Read(data)
		sum := sha256.Sum256(data)
		began := time.Now()
		res := make(chan error, 1)
		w.pending.Add(1)
		go func() {
			defer w.pending.Done()
			res <- writeFsync(filepath.Join(node.Mountpoint(), rel), data)
		}()
		var err error
		select {
		case err = <-res:
		case <-time.After(writeOpTimeout):
			err = fmt.Errorf("no answer within %s", writeOpTimeout)
		}
		now := time.Now()
		w.mu.Lock()
		w.maxLatency = max(w.maxLatency, now.Sub(began))
		if err != nil {
			w.failures = append(w.failures, opFailure{node: node.ID(), rel: rel, err: err, at: now.Sub(w.start)})
		} else {
			w.done = append(w.done, written{rel: rel, sha256: hex.EncodeToString(sum[:]), node: node.ID()})
			w.completions = append(w.completions, now.Sub(w.start))
		}
		w.mu.Unlock()
		if err != nil {
			time.Sleep(100 * time.Millisecond) // a failing mount: do not spin
		}
		time.Sleep(think)
	}
}

// since is the load's clock.
func (w *writeLoad) since() time.Duration { return time.Since(w.start) }

// longestGap is the longest time between two successful completions
// (of any client) within [from, to], counting from `from` to the first
// completion and from the last one to `to`.
func (w *writeLoad) longestGap(from, to time.Duration) time.Duration {
	w.mu.Lock()
	times := append([]time.Duration(nil), w.completions...)
	w.mu.Unlock()
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	prev, gap := from, time.Duration(0)
	for _, t := range times {
		if t < from || t > to {
			continue
		}
		gap = max(gap, t-prev)
		prev = t
	}
	return max(gap, to-prev)
}

// firstCompletionAfter is the first successful completion after t, or -1.
func (w *writeLoad) firstCompletionAfter(t time.Duration) time.Duration {
	w.mu.Lock()
	defer w.mu.Unlock()
	first := time.Duration(-1)
	for _, c := range w.completions {
		if c > t && (first < 0 || c < first) {
			first = c
		}
	}
	return first
}

// results returns what succeeded and what failed.
func (w *writeLoad) results() ([]written, []opFailure) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]written(nil), w.done...), append([]opFailure(nil), w.failures...)
}

// waitPending waits up to timeout for abandoned operations to finish.
func (w *writeLoad) waitPending(timeout time.Duration) bool {
	done := make(chan struct{})
	go func() { w.pending.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(timeout):
		return false
	}
}

// writeFsync creates path exclusively, writes data, fsyncs and closes it:
// success means the file is durable and its metadata committed.
func writeFsync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// checkPresent fails the test for every acknowledged file that is missing
// or has other content on any of the nodes' mounts.
func checkPresent(t *testing.T, files []written, nodes []*clustertest.Node) {
	t.Helper()
	missing := 0
	for _, n := range nodes {
		for _, f := range files {
			data, err := os.ReadFile(filepath.Join(n.Mountpoint(), f.rel))
			sum := sha256.Sum256(data)
			switch {
			case err != nil:
				missing++
				if missing <= 10 {
					t.Errorf("%s: acknowledged file %s (written on %s) is lost: %v", n.ID(), f.rel, f.node, err)
				}
			case hex.EncodeToString(sum[:]) != f.sha256:
				missing++
				if missing <= 10 {
					t.Errorf("%s: acknowledged file %s (written on %s) has other content (%d bytes)", n.ID(), f.rel, f.node, len(data))
				}
			}
		}
	}
	if missing > 0 {
		t.Errorf("%d acknowledged files lost or changed (over %d files x %d mounts)", missing, len(files), len(nodes))
	}
}

// mkdirOn makes dir on node's mount and waits until every given node
// sees it.
func mkdirOn(t *testing.T, node *clustertest.Node, dir string, nodes []*clustertest.Node) {
	t.Helper()
	if err := os.Mkdir(filepath.Join(node.Mountpoint(), dir), 0o755); err != nil {
		t.Fatalf("mkdir %s on %s: %v", dir, node.ID(), err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, n := range nodes {
		for {
			if st, err := os.Stat(filepath.Join(n.Mountpoint(), dir)); err == nil && st.IsDir() {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s does not see directory %s created on %s after 10s", n.ID(), dir, node.ID())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// errnoName names the errno in err, for the logs.
func errnoName(err error) string {
	var errno unix.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	return err.Error()
}

// summarizeFailures groups failures by node and error, for the logs.
func summarizeFailures(fs []opFailure) string {
	counts := map[string]int{}
	for _, f := range fs {
		counts[f.node+": "+errnoName(f.err)]++
	}
	var b bytes.Buffer
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "%s x%d; ", k, counts[k])
	}
	return b.String()
}
