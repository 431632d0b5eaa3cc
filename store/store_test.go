package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

func openTestStore(t *testing.T, opts Options) (*LocalStore, string) {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(context.Background(), "file://"+dir, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s.(*LocalStore), dir
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) + seed
	}
	return b
}

func TestOpenURLs(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		url     string
		wantErr string // substring; "" means success
	}{
		{"absolute", "file://" + dir + "/a", ""},
		{"localhost", "file://localhost" + dir + "/b", ""},
		{"nested missing dirs", "file://" + dir + "/c/d/e", ""},
		{"empty", "", "empty URL"},
		{"no scheme", dir, "missing scheme"},
		{"unknown scheme", "ftp://host/x", `unknown scheme "ftp"`},
		{"s3 without bucket", "s3:///prefix", "missing bucket name"},
		{"relative opaque", "file:rel/path", "relative path"},
		{"relative host", "file://rel/path", "relative path?"},
		{"empty path", "file://", "empty path"},
		{"root", "file:///", "refusing"},
		{"query", "file:///x?y=1", "query"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Open(context.Background(), tt.url, Options{})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Open(%q): %v", tt.url, err)
				}
				defer s.Close()
				if err := s.Check(context.Background()); err != nil {
					t.Fatalf("Check: %v", err)
				}
				if fi, err := os.Stat(strings.TrimPrefix(strings.TrimPrefix(s.String(), "file://"), "localhost")); err != nil || fi.Mode().Perm() != dirPerm && !strings.Contains(tt.name, "nested") {
					t.Fatalf("store dir: %v %v", fi, err)
				}
				return
			}
			if err == nil {
				s.Close()
				t.Fatalf("Open(%q) succeeded, want error containing %q", tt.url, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Open(%q) = %v, want error containing %q", tt.url, err, tt.wantErr)
			}
		})
	}
}

func TestOpenNotADirectory(t *testing.T) {
	f := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(context.Background(), "file://"+f, Options{}); err == nil {
		t.Fatal("Open on a regular file succeeded")
	}
}

func TestPutReadAt(t *testing.T) {
	ctx := context.Background()
	s, dir := openTestStore(t, Options{})
	const id = 0x1234_5678_9abc_def0
	data := pattern(100_000, 3)
	if err := s.Put(ctx, id, data); err != nil {
		t.Fatalf("Put: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "blocks", "f0", "123456789abcdef0")); err != nil {
		t.Fatalf("block not at the documented path: %v", err)
	}
	if err := s.Put(ctx, 7, nil); err != nil {
		t.Fatalf("Put empty block: %v", err)
	}
	tests := []struct {
		name  string
		id    uint64
		off   int64
		len   int
		wantN int
		err   error
	}{
		{"whole", id, 0, len(data), len(data), nil},
		{"head", id, 0, 10, 10, nil},
		{"middle", id, 65536, 4096, 4096, nil},
		{"short at end", id, 99_000, 4096, 1000, nil},
		{"at end", id, int64(len(data)), 10, 0, nil},
		{"past end", id, 1 << 30, 10, 0, nil},
		{"empty dst", id, 5, 0, 0, nil},
		{"empty block", 7, 0, 10, 0, nil},
		{"missing", 8, 0, 10, 0, ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := make([]byte, tt.len)
			n, err := s.ReadAt(ctx, tt.id, tt.off, dst)
			if !errors.Is(err, tt.err) || (tt.err == nil && err != nil) {
				t.Fatalf("ReadAt err = %v, want %v", err, tt.err)
			}
			if n != tt.wantN {
				t.Fatalf("ReadAt n = %d, want %d", n, tt.wantN)
			}
			if tt.err == nil && tt.id == id && n > 0 && !bytes.Equal(dst[:n], data[tt.off:tt.off+int64(n)]) {
				t.Fatal("ReadAt returned wrong bytes")
			}
		})
	}
	if _, err := s.ReadAt(ctx, id, -1, make([]byte, 1)); err == nil {
		t.Fatal("negative offset accepted")
	}
}

func listIDs(t *testing.T, s Store) []uint64 {
	t.Helper()
	var ids []uint64
	if err := s.List(context.Background(), func(id uint64) error { ids = append(ids, id); return nil }); err != nil {
		t.Fatalf("List: %v", err)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	return ids
}

func TestDeleteAndList(t *testing.T) {
	ctx := context.Background()
	s, _ := openTestStore(t, Options{})
	ids := []uint64{1, 2, 0x100, 0x201, 0xffff_ffff_ffff_ffff}
	for _, id := range ids {
		if err := s.Put(ctx, id, pattern(10, byte(id))); err != nil {
			t.Fatalf("Put %d: %v", id, err)
		}
	}
	if got := listIDs(t, s); fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Fatalf("List = %v, want %v", got, ids)
	}
	// Warm the descriptor cache, then delete: the descriptor must go too.
	if _, err := s.ReadAt(ctx, 2, 0, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	if s.fds.len() != 1 {
		t.Fatalf("fd cache holds %d, want 1", s.fds.len())
	}
	for _, id := range []uint64{2, 2, 999} { // twice, and never existed: no error
		if err := s.Delete(ctx, id); err != nil {
			t.Fatalf("Delete %d: %v", id, err)
		}
	}
	if s.fds.len() != 0 {
		t.Fatalf("fd cache holds %d after Delete, want 0", s.fds.len())
	}
	if _, err := s.ReadAt(ctx, 2, 0, make([]byte, 4)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ReadAt deleted = %v, want ErrNotFound", err)
	}
	if got, want := listIDs(t, s), []uint64{1, 0x100, 0x201, 0xffff_ffff_ffff_ffff}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("List = %v, want %v", got, want)
	}
	stop := errors.New("stop")
	if err := s.List(ctx, func(uint64) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("List with failing fn = %v, want wrapped stop", err)
	}
}

func TestFDCacheBounded(t *testing.T) {
	ctx := context.Background()
	s, _ := openTestStore(t, Options{})
	for id := uint64(0); id < maxOpenBlocks+50; id++ {
		if err := s.Put(ctx, id, []byte{byte(id)}); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1)
		if n, err := s.ReadAt(ctx, id, 0, buf); err != nil || n != 1 || buf[0] != byte(id) {
			t.Fatalf("ReadAt %d = %d, %v, %v", id, n, err, buf)
		}
	}
	if n := s.fds.len(); n != maxOpenBlocks {
		t.Fatalf("fd cache holds %d, want %d", n, maxOpenBlocks)
	}
}

func TestTmpFilesIgnoredAndSwept(t *testing.T) {
	ctx := context.Background()
	s, dir := openTestStore(t, Options{})
	if err := s.Put(ctx, 0x42, []byte("block")); err != nil {
		t.Fatal(err)
	}
	fan := filepath.Join(dir, "blocks", "42")
	old := filepath.Join(fan, "0000000000000042.tmp.deadbeef")
	fresh := filepath.Join(fan, "0000000000000043.tmp.cafe")
	oldProbe := filepath.Join(dir, "blocks", probePrefix+"1")
	for _, p := range []string{old, fresh, oldProbe} {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	longAgo := time.Now().Add(-2 * DefaultTmpGrace)
	for _, p := range []string{old, oldProbe} {
		if err := os.Chtimes(p, longAgo, longAgo); err != nil {
			t.Fatal(err)
		}
	}
	if got := listIDs(t, s); fmt.Sprint(got) != "[66]" {
		t.Fatalf("List = %v, want only the complete block [66]", got)
	}
	s.Close()

	s2, err := Open(ctx, "file://"+dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	for _, c := range []struct {
		path string
		want bool
	}{{old, false}, {oldProbe, false}, {fresh, true}} {
		_, err := os.Stat(c.path)
		if exists := err == nil; exists != c.want {
			t.Errorf("%s exists = %v after reopen, want %v", filepath.Base(c.path), exists, c.want)
		}
	}
	if n, err := s2.(*LocalStore).Sweep(ctx, 0); err != nil || n != 1 {
		t.Fatalf("Sweep(0) = %d, %v; want 1, nil", n, err)
	}
}

// recordingIO wraps the real syscalls, records the calls and fails the
// first call whose name equals failOn.
type recordingIO struct {
	syscallIO
	mu     sync.Mutex
	calls  []string
	failOn string
	err    error
}

func (r *recordingIO) note(call string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, call)
	if call == r.failOn {
		r.failOn = ""
		return r.err
	}
	return nil
}

func (r *recordingIO) CreateExcl(path string, perm uint32) (int, error) {
	if err := r.note("create"); err != nil {
		return -1, err
	}
	return r.syscallIO.CreateExcl(path, perm)
}

func (r *recordingIO) Pwrite(fd int, p []byte, off int64) (int, error) {
	if err := r.note("pwrite"); err != nil {
		return 0, err
	}
	return r.syscallIO.Pwrite(fd, p, off)
}

func (r *recordingIO) Fsync(fd int) error {
	if err := r.note("fsync"); err != nil {
		return err
	}
	return r.syscallIO.Fsync(fd)
}

func (r *recordingIO) OpenDir(path string) (int, error) {
	if err := r.note("opendir " + filepath.Base(path)); err != nil {
		return -1, err
	}
	return r.syscallIO.OpenDir(path)
}

func (r *recordingIO) Rename(oldpath, newpath string) error {
	if err := r.note("rename"); err != nil {
		return err
	}
	return r.syscallIO.Rename(oldpath, newpath)
}

func (r *recordingIO) Close(fd int) error {
	_ = r.note("close")
	return r.syscallIO.Close(fd)
}

func (r *recordingIO) Unlink(path string) error {
	_ = r.note("unlink")
	return r.syscallIO.Unlink(path)
}

func TestPutDurabilityOrder(t *testing.T) {
	ctx := context.Background()
	rec := &recordingIO{}
	dir := t.TempDir()
	s, err := openLocalIO(ctx, dir, Options{}, rec)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	rec.calls = nil
	if err := s.Put(ctx, 0x0105, []byte("data")); err != nil {
		t.Fatal(err)
	}
	want := "opendir blocks fsync close " + // new fan-out dir made durable in its parent
		"create pwrite fsync close rename " + // the block, durable before it is visible
		"opendir 05 fsync close" // the rename made durable
	if got := strings.Join(rec.calls, " "); got != want {
		t.Fatalf("Put calls:\n got %s\nwant %s", got, want)
	}
}

func TestPutFailureLeavesNothing(t *testing.T) {
	for _, failOn := range []string{"create", "pwrite", "fsync", "rename"} {
		t.Run(failOn, func(t *testing.T) {
			ctx := context.Background()
			rec := &recordingIO{}
			dir := t.TempDir()
			s, err := openLocalIO(ctx, dir, Options{}, rec)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			// Let the fan-out directory be created first.
			if err := s.Put(ctx, 0x200, []byte("x")); err != nil {
				t.Fatal(err)
			}
			rec.failOn, rec.err = failOn, syscall.ENOSPC
			err = s.Put(ctx, 0x100, pattern(8192, 1))
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("Put = %v, want ENOSPC", err)
			}
			if !strings.Contains(err.Error(), "store put block 0x0000000000000100") {
				t.Fatalf("error lacks context: %v", err)
			}
			entries, _ := os.ReadDir(filepath.Join(dir, "blocks", "00"))
			if len(entries) != 1 || entries[0].Name() != "0000000000000200" {
				t.Fatalf("fan-out dir holds %v, want only the earlier block", entries)
			}
		})
	}
}

// mountTmpfs mounts a tmpfs with the given options on a fresh directory,
// unmounting it at cleanup; it skips the test where mounting is not allowed.
func mountTmpfs(t *testing.T, data string) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, data); err != nil {
		t.Logf("SKIP: cannot mount tmpfs (need root or CAP_SYS_ADMIN): %v", err)
		t.Skipf("SKIP: cannot mount tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func TestPutNoSpace(t *testing.T) {
	ctx := context.Background()
	dir := mountTmpfs(t, "size=256k")
	s, err := Open(ctx, "file://"+dir+"/store", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Put(ctx, 1, pattern(64<<10, 1)); err != nil {
		t.Fatalf("small Put: %v", err)
	}
	err = s.Put(ctx, 2, pattern(1<<20, 2))
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Put on a full disk = %v, want ENOSPC", err)
	}
	if !strings.Contains(err.Error(), "no space left on device") || !strings.Contains(err.Error(), "store put block 0x0000000000000002") {
		t.Fatalf("error message lacks context: %v", err)
	}
	t.Logf("full-disk error: %v", err)
	var names []string
	_ = filepath.WalkDir(filepath.Join(dir, "store", "blocks"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			names = append(names, d.Name())
		}
		return nil
	})
	if fmt.Sprint(names) != "[0000000000000001]" {
		t.Fatalf("files after failed Put: %v, want only block 1", names)
	}
	if _, err := s.ReadAt(ctx, 2, 0, make([]byte, 1)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("failed block readable: %v", err)
	}
	// Space freed by the failed Put is usable again.
	if err := s.Put(ctx, 3, pattern(64<<10, 3)); err != nil {
		t.Fatalf("Put after ENOSPC: %v", err)
	}
}

func TestCheckReadOnly(t *testing.T) {
	ctx := context.Background()
	dir := mountTmpfs(t, "size=1m")
	s, err := Open(ctx, "file://"+dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Check(ctx); err != nil {
		t.Fatalf("Check on a writable store: %v", err)
	}
	if err := s.Put(ctx, 1, []byte("before")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Skipf("SKIP: cannot remount read-only: %v", err)
	}
	err = s.Check(ctx)
	if !errors.Is(err, syscall.EROFS) || !strings.Contains(err.Error(), "not writable") {
		t.Fatalf("Check on a read-only store = %v, want a clear EROFS error", err)
	}
	t.Logf("read-only Check error: %v", err)
	if err := s.Put(ctx, 2, []byte("x")); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("Put on a read-only store = %v, want EROFS", err)
	}
	// Reads still work, and a read-only store can be opened.
	buf := make([]byte, 6)
	if n, err := s.ReadAt(ctx, 1, 0, buf); err != nil || string(buf[:n]) != "before" {
		t.Fatalf("ReadAt on read-only store = %q, %v", buf[:n], err)
	}
	s2, err := Open(ctx, "file://"+dir, Options{})
	if err != nil {
		t.Fatalf("Open of a read-only store: %v", err)
	}
	s2.Close()
}

func TestContextAndClose(t *testing.T) {
	s, _ := openTestStore(t, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Put(ctx, 1, []byte("x")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put with cancelled ctx = %v", err)
	}
	s.Close()
	if _, err := s.ReadAt(context.Background(), 1, 0, make([]byte, 1)); err == nil {
		t.Fatal("ReadAt after Close succeeded")
	}
}

func counterValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metric:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue metric
				}
			}
			if h := m.GetHistogram(); h != nil {
				return float64(h.GetSampleCount())
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func TestMetrics(t *testing.T) {
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	s, _ := openTestStore(t, Options{Registerer: reg})
	// A second store on the same registry shares the collectors.
	s2, err := Open(ctx, "file://"+t.TempDir(), Options{Registerer: reg})
	if err != nil {
		t.Fatalf("second store on one registry: %v", err)
	}
	defer s2.Close()

	_ = s.Put(ctx, 1, []byte("x"))
	_, _ = s.ReadAt(ctx, 1, 0, make([]byte, 1))
	_, _ = s.ReadAt(ctx, 2, 0, make([]byte, 1))
	_ = s.Delete(ctx, 1)
	_ = s.List(ctx, func(uint64) error { return nil })
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_ = s.Put(cctx, 3, []byte("x"))

	tests := []struct {
		op, outcome string
		want        float64
	}{
		{"put", "ok", 1}, {"put", "error", 1}, {"get", "ok", 1}, {"get", "not_found", 1},
		{"delete", "ok", 1}, {"list", "ok", 1},
	}
	for _, tt := range tests {
		got := counterValue(t, reg, "datenlord_store_requests_total", map[string]string{"op": tt.op, "outcome": tt.outcome})
		if got != tt.want {
			t.Errorf("requests_total{op=%s,outcome=%s} = %v, want %v", tt.op, tt.outcome, got, tt.want)
		}
	}
	if got := counterValue(t, reg, "datenlord_store_request_duration_seconds", map[string]string{"op": "get"}); got != 2 {
		t.Errorf("duration{op=get} count = %v, want 2", got)
	}
}

func TestConcurrentReadDelete(t *testing.T) {
	ctx := context.Background()
	s, _ := openTestStore(t, Options{})
	const blocks = 64
	for id := uint64(0); id < blocks; id++ {
		if err := s.Put(ctx, id, pattern(4096, byte(id))); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for i := 0; i < 2000; i++ {
				id := uint64(i % blocks)
				n, err := s.ReadAt(ctx, id, 0, buf)
				if err != nil {
					if !errors.Is(err, ErrNotFound) {
						t.Errorf("ReadAt %d: %v", id, err)
					}
					continue
				}
				if n != 4096 || !bytes.Equal(buf, pattern(4096, byte(id))) {
					t.Errorf("ReadAt %d: wrong bytes", id)
					return
				}
			}
		}()
	}
	for id := uint64(0); id < blocks; id += 2 {
		if err := s.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	for id := uint64(0); id < blocks; id += 2 {
		if _, err := s.ReadAt(ctx, id, 0, make([]byte, 1)); !errors.Is(err, ErrNotFound) {
			t.Fatalf("deleted block %d still readable: %v", id, err)
		}
	}
}
