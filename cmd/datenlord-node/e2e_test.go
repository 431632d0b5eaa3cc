package main

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestHelpHasExamples(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"--help"}, {"serve", "--help"}, {"version", "--help"}} {
		r := runCLI(t, nil, args...)
		if r.code != 0 || !strings.Contains(r.stdout, "Examples:") || !strings.Contains(r.stdout, "datenlord-node ") {
			t.Errorf("%v: exit %d, want 0 and an Examples: block; stdout:\n%s\nstderr:\n%s", args, r.code, r.stdout, r.stderr)
		}
	}
	r := runCLI(t, nil, "serve", "--help")
	for _, flag := range []string{"--data-dir", "--mount", "--store", "--cache-mem", "--block-size", "--page-size", "--log-level", "--metrics", "--dirty-limit", "--attr-timeout", "--entry-timeout", "--fuse-debug"} {
		if !strings.Contains(r.stdout, flag) {
			t.Errorf("serve --help does not document %s", flag)
		}
	}
}

func TestVersion(t *testing.T) {
	t.Parallel()
	r := runCLI(t, nil, "version")
	for _, want := range []string{"e2e-test", "e2e-commit", runtime.Version()} {
		if r.code != 0 || !strings.Contains(r.stdout, want) {
			t.Errorf("version: exit %d, stdout %q; want it to contain %q", r.code, r.stdout, want)
		}
	}
	if r := runCLI(t, nil, "--version"); r.code != 0 || !strings.Contains(r.stdout, "e2e-test") {
		t.Errorf("--version: exit %d, stdout %q", r.code, r.stdout)
	}
}

// TestBadInput checks that every start-up mistake exits non-zero with a
// message that says what is wrong, without mounting anything.
func TestBadInput(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setup prepares the case and returns the args and environment.
		setup   func(t *testing.T) (args, env []string)
		wantErr []string
	}{
		{
			name:    "unknown flag",
			setup:   func(t *testing.T) ([]string, []string) { return []string{"serve", "--no-such-flag"}, nil },
			wantErr: []string{"unknown flag: --no-such-flag", "Usage:"},
		},
		{
			name:    "unknown command",
			setup:   func(t *testing.T) ([]string, []string) { return []string{"srve"}, nil },
			wantErr: []string{`unknown command "srve"`},
		},
		{
			name:    "bad cache-mem",
			setup:   func(t *testing.T) ([]string, []string) { return []string{"serve", "--cache-mem", "12XB"}, nil },
			wantErr: []string{`invalid size "12XB"`, "--cache-mem"},
		},
		{
			name: "page size does not divide block size",
			setup: func(t *testing.T) ([]string, []string) {
				return []string{"serve", "--page-size", "48KiB", "--block-size", "512KiB"}, nil
			},
			wantErr: []string{"--page-size 48KiB does not divide --block-size 512KiB"},
		},
		{
			name: "bad env value",
			setup: func(t *testing.T) ([]string, []string) {
				return []string{"serve"}, []string{"DATENLORD_CACHE_MEM=lots"}
			},
			wantErr: []string{"DATENLORD_CACHE_MEM", `invalid size "lots"`},
		},
		{
			name: "bad env log level",
			setup: func(t *testing.T) ([]string, []string) {
				return []string{"serve"}, []string{"DATENLORD_LOG_LEVEL=chatty"}
			},
			wantErr: []string{"DATENLORD_LOG_LEVEL", "chatty"},
		},
		{
			name: "mount point missing",
			setup: func(t *testing.T) ([]string, []string) {
				data, mnt := dirs(t)
				return append([]string{"serve"}, serveArgs(data, mnt+"-missing")...), nil
			},
			wantErr: []string{"-missing does not exist"},
		},
		{
			name: "data dir locked by another process",
			setup: func(t *testing.T) ([]string, []string) {
				data, mnt := dirs(t)
				if err := os.MkdirAll(data, 0o700); err != nil {
					t.Fatal(err)
				}
				// Hold the lock as a running node would.
				lock, err := lockDataDir(data, filepath.Join(data, "LOCK"))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { lock.Close() })
				return append([]string{"serve"}, serveArgs(data, mnt)...), nil
			},
			wantErr: []string{"is in use by another datenlord-node process", fmt.Sprintf("(pid %d)", os.Getpid())},
		},
		{
			name: "mount point busy",
			setup: func(t *testing.T) ([]string, []string) {
				requireRoot(t)
				data, mnt := dirs(t)
				mountTmpfs(t, mnt, "size=1m")
				return append([]string{"serve"}, serveArgs(data, mnt)...), nil
			},
			wantErr: []string{"is busy", "tmpfs"},
		},
		{
			name: "unwritable store",
			setup: func(t *testing.T) ([]string, []string) {
				requireRoot(t)
				data, mnt := dirs(t)
				storeDir := filepath.Join(t.TempDir(), "ro")
				if err := os.Mkdir(storeDir, 0o755); err != nil {
					t.Fatal(err)
				}
				mountTmpfs(t, storeDir, "ro,size=1m")
				return append([]string{"serve"}, serveArgs(data, mnt, "--store", "file://"+storeDir+"/blocks")...), nil
			},
			wantErr: []string{"store", "read-only file system"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args, env := tc.setup(t)
			r := runCLI(t, env, args...)
			if r.code == 0 {
				t.Fatalf("%v: exit 0, want non-zero\nstderr:\n%s", args, r.stderr)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(r.stderr, want) {
					t.Errorf("%v: stderr does not contain %q:\n%s", args, want, r.stderr)
				}
			}
			if strings.Contains(r.stderr, "panic:") || strings.Contains(r.stderr, "goroutine ") {
				t.Errorf("%v crashed instead of reporting an error:\n%s", args, r.stderr)
			}
		})
	}
}

// TestServeStopsOnSignal mounts, checks the mount works, and checks that
// SIGTERM and SIGINT both unmount and exit 0.
func TestServeStopsOnSignal(t *testing.T) {
	requireFUSE(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(unix.SignalName(sig), func(t *testing.T) {
			data, mnt := dirs(t)
			n := startNode(t, mnt, nil, serveArgs(data, mnt)...)
			n.waitMounted()
			writeFile(t, filepath.Join(mnt, "hello"), []byte("hello, world\n"))
			if got := readFile(t, filepath.Join(mnt, "hello")); string(got) != "hello, world\n" {
				t.Fatalf("read back %q", got)
			}
			if code := n.signal(sig); code != 0 {
				t.Fatalf("exit %d after %v, want 0\n%s", code, sig, n.stderr.String())
			}
			if isMounted(mnt) {
				t.Fatalf("%s still mounted after %v", mnt, sig)
			}
			if !strings.Contains(n.stderr.String(), "mounted at "+mnt) {
				t.Errorf("log does not say where it mounted:\n%s", n.stderr.String())
			}
		})
	}
}

// TestSecondSignalExitsImmediately keeps the mount busy so that the clean
// shutdown is slow, and checks that a second SIGTERM ends the process at
// once with a non-zero exit.
func TestSecondSignalExitsImmediately(t *testing.T) {
	requireFUSE(t)
	data, mnt := dirs(t)
	n := startNode(t, mnt, nil, serveArgs(data, mnt)...)
	n.waitMounted()
	busy, err := os.Create(filepath.Join(mnt, "busy")) // an open file makes umount(2) fail with EBUSY
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(exitTimeout)
	for !strings.Contains(n.stderr.String(), "flushing and unmounting") {
		if time.Now().After(deadline) {
			t.Fatalf("no shutdown after SIGTERM:\n%s", n.stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	code := n.signal(syscall.SIGTERM)
	if code != 128+int(syscall.SIGTERM) {
		t.Errorf("exit %d after a second SIGTERM, want %d\n%s", code, 128+int(syscall.SIGTERM), n.stderr.String())
	}
	if !strings.Contains(n.stderr.String(), "second signal") {
		t.Errorf("no log of the second signal:\n%s", n.stderr.String())
	}
}

// TestExternalUnmount checks that umount(8) of the mount ends the process
// cleanly.
func TestExternalUnmount(t *testing.T) {
	requireFUSE(t)
	data, mnt := dirs(t)
	n := startNode(t, mnt, nil, serveArgs(data, mnt)...)
	n.waitMounted()
	if out, err := runTool("umount", mnt); err != nil {
		t.Fatalf("umount: %v: %s", err, out)
	}
	if code := n.wait(exitTimeout); code != 0 {
		t.Fatalf("exit %d after external unmount, want 0\n%s", code, n.stderr.String())
	}
}

// TestSecondServeRejected starts a node and checks that a second one on the
// same mount point, or on the same data dir, fails with a clear error.
func TestSecondServeRejected(t *testing.T) {
	requireFUSE(t)
	data, mnt := dirs(t)
	first := startNode(t, mnt, nil, serveArgs(data, mnt)...)
	first.waitMounted()

	otherData, otherMnt := dirs(t)
	r := runCLI(t, nil, append([]string{"serve"}, serveArgs(otherData, mnt)...)...)
	if r.code == 0 || !strings.Contains(r.stderr, "mount point "+mnt+" is busy") {
		t.Errorf("second serve on the same mount: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	r = runCLI(t, nil, append([]string{"serve"}, serveArgs(data, otherMnt)...)...)
	if r.code == 0 || !strings.Contains(r.stderr, "data dir "+data+" is in use by another datenlord-node process") {
		t.Errorf("second serve on the same data dir: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if isMounted(otherMnt) {
		t.Errorf("the rejected node mounted %s", otherMnt)
	}
	first.stop()
}

// TestCrashDurability is the acceptance test of the durability guarantee:
// what was fsync'd survives kill -9 byte for byte.
func TestCrashDurability(t *testing.T) {
	requireFUSE(t)
	data, mnt := dirs(t)
	n := startNode(t, mnt, nil, serveArgs(data, mnt)...)
	n.waitMounted()

	want := map[string][]byte{"big": randomBytes(t, 3<<20+12345)}
	for i := 0; i < 8; i++ {
		want[fmt.Sprintf("small/%d", i)] = randomBytes(t, 1+i*1500)
	}
	if err := os.Mkdir(filepath.Join(mnt, "small"), 0o755); err != nil {
		t.Fatal(err)
	}
	// "big" stays open across the crash: fsync alone must make it durable.
	big, err := os.Create(filepath.Join(mnt, "big"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := big.Write(want["big"]); err != nil {
		t.Fatal(err)
	}
	if err := big.Sync(); err != nil {
		t.Fatalf("fsync big: %v", err)
	}
	for name, b := range want {
		if name != "big" {
			writeFile(t, filepath.Join(mnt, name), b)
		}
	}

	n.kill()
	big.Close() // the connection is gone; the error does not matter

	n2 := startNode(t, mnt, nil, serveArgs(data, mnt)...)
	n2.waitMounted()
	for name, b := range want {
		got := readFile(t, filepath.Join(mnt, name))
		if sha256.Sum256(got) != sha256.Sum256(b) {
			t.Errorf("%s after kill -9: %d bytes, sha256 %x; want %d bytes, sha256 %x", name, len(got), sha256.Sum256(got), len(b), sha256.Sum256(b))
		}
	}
	n2.stop()
}

// TestCleanRestart builds a tree with every kind of metadata, restarts the
// node cleanly and checks that all of it is as it was.
func TestCleanRestart(t *testing.T) {
	requireFUSE(t)
	data, mnt := dirs(t)
	n := startNode(t, mnt, nil, serveArgs(data, mnt)...)
	n.waitMounted()

	p := func(rel string) string { return filepath.Join(mnt, rel) }
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(p("a/b/c"), 0o755))
	writeFile(t, p("a/file1"), randomBytes(t, 200<<10))
	writeFile(t, p("a/b/file2"), randomBytes(t, 1<<20+100)) // spans three 512 KiB blocks
	writeFile(t, p("empty"), nil)
	writeFile(t, p("hello.txt"), []byte("hello\n"))
	must(os.Symlink("a/file1", p("link")))
	must(os.Symlink("nowhere", p("dangling")))
	must(os.Link(p("a/file1"), p("a/b/hard")))
	must(unix.Setxattr(p("a/file1"), "user.color", []byte("blue"), 0))
	must(unix.Setxattr(p("hello.txt"), "user.empty", []byte{}, 0))
	must(unix.Setxattr(p("a"), "user.bin", []byte{0, 1, 2, 255}, 0))
	must(os.Chmod(p("a/file1"), 0o640))
	must(os.Chmod(p("a/b"), 0o750))
	must(os.Chmod(p("hello.txt"), 0o600))
	must(unix.Chmod(p("a/b/c"), 0o1777)) // os.Chmod would want os.ModeSticky
	must(unix.Chmod(p("a/b/file2"), 0o4755))
	must(os.Chown(p("a/file1"), 1234, 5678))
	must(os.Chown(p("a/b"), 1234, 5678))
	must(os.Lchown(p("link"), 1234, 5678))
	fixed := time.Date(2020, 2, 29, 12, 34, 56, 789_000_000, time.UTC)
	for _, rel := range []string{"a/b/c", "a/b/file2", "a/b/hard", "a/b", "a/file1", "a", "empty", "hello.txt", "link", "dangling"} {
		ts := []unix.Timespec{unix.NsecToTimespec(fixed.UnixNano()), unix.NsecToTimespec(fixed.UnixNano())}
		must(unix.UtimesNanoAt(unix.AT_FDCWD, p(rel), ts, unix.AT_SYMLINK_NOFOLLOW))
	}

	before := listTree(t, mnt)
	// Check the listing itself, so that the comparison below is not
	// between two equally wrong views.
	checks := []struct {
		rel   string
		check func(e entry) bool
		what  string
	}{
		{"a/file1", func(e entry) bool { return e.Uid == 1234 && e.Gid == 5678 && e.Mode&0o7777 == 0o640 && e.Nlink == 2 }, "uid 1234 gid 5678 mode 0640 nlink 2"},
		{"a/b/c", func(e entry) bool { return e.Mode&0o7777 == 0o1777 && e.Mode&syscall.S_IFMT == syscall.S_IFDIR }, "directory with mode 1777"},
		{"a/b/file2", func(e entry) bool { return e.Mode&0o7777 == 0o4755 && e.Size == 1<<20+100 }, "setuid, 1 MiB + 100 bytes"},
		{"link", func(e entry) bool { return e.Target == "a/file1" && e.Uid == 1234 }, "symlink to a/file1 owned by 1234"},
		{"a", func(e entry) bool { return e.Xattrs["user.bin"] == "\x00\x01\x02\xff" }, "xattr user.bin"},
		{"hello.txt", func(e entry) bool { _, ok := e.Xattrs["user.empty"]; return ok }, "empty xattr user.empty"},
		{"a/b/hard", func(e entry) bool { return e.MtimeNs == fixed.UnixNano() && e.SHA256 == before["a/file1"].SHA256 }, "fixed mtime and the content of a/file1"},
	}
	for _, c := range checks {
		if e, ok := before[c.rel]; !ok || !c.check(e) {
			t.Errorf("before restart, %s is %+v; want %s", c.rel, e, c.what)
		}
	}

	n.stop()
	n2 := startNode(t, mnt, nil, serveArgs(data, mnt)...)
	n2.waitMounted()
	after := listTree(t, mnt)
	if !reflect.DeepEqual(before, after) {
		for _, k := range unionKeys(before, after) {
			if b, a := before[k], after[k]; !reflect.DeepEqual(b, a) {
				t.Errorf("%s changed across a clean restart:\n before %+v\n after  %+v", k, b, a)
			}
		}
	}
	n2.stop()
}

// TestEnvConfig runs a node configured only through DATENLORD_* variables.
func TestEnvConfig(t *testing.T) {
	requireFUSE(t)
	data, mnt := dirs(t)
	n := startNode(t, mnt, []string{
		"DATENLORD_DATA_DIR=" + data,
		"DATENLORD_MOUNT=" + mnt,
		"DATENLORD_CACHE_MEM=64MiB",
		"DATENLORD_LOG_LEVEL=debug",
	})
	n.waitMounted()
	writeFile(t, filepath.Join(mnt, "f"), []byte("env"))
	for _, p := range []string{"LOCK", "meta", "store"} {
		if _, err := os.Stat(filepath.Join(data, p)); err != nil {
			t.Errorf("data dir from DATENLORD_DATA_DIR: %v", err)
		}
	}
	if st, err := os.Stat(data); err != nil || st.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode: %v, %v; want 0700", st.Mode(), err)
	}
	n.stop()
	if log := n.stderr.String(); !strings.Contains(log, "cache_mem=64MiB") || !strings.Contains(log, "level=DEBUG") {
		t.Errorf("DATENLORD_CACHE_MEM / DATENLORD_LOG_LEVEL not applied; log:\n%s", log)
	}
}

// TestMetrics checks the operational endpoints.
func TestMetrics(t *testing.T) {
	requireFUSE(t)
	data, mnt := dirs(t)
	addr := freeAddr(t)
	n := startNode(t, mnt, nil, serveArgs(data, mnt, "--metrics", addr)...)
	n.waitMounted()
	writeFile(t, filepath.Join(mnt, "f"), randomBytes(t, 100<<10))

	client := &http.Client{Timeout: 10 * time.Second}
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := client.Get("http://" + addr + path)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	for _, path := range []string{"/healthz", "/readyz", "/debug/pprof/"} {
		if code, body := get(path); code != http.StatusOK {
			t.Errorf("GET %s: %d %s", path, code, body)
		}
	}
	code, body := get("/metrics")
	for _, want := range []string{"datenlord_store_requests_total", "datenlord_gc_deleted_blocks_total", "datenlord_build_info", "go_goroutines", "process_resident_memory_bytes"} {
		if code != http.StatusOK || !strings.Contains(body, want) {
			t.Errorf("/metrics (%d) does not contain %s", code, want)
		}
	}
	n.stop()
}

// entry is what TestCleanRestart compares of one file.
type entry struct {
	Mode     uint32
	Uid, Gid uint32
	Size     int64
	MtimeNs  int64
	Nlink    uint64
	Target   string
	Xattrs   map[string]string
	SHA256   string
}

// listTree describes every file under root, by path relative to root.
func listTree(t *testing.T, root string) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return err
		}
		e := entry{Mode: st.Mode, Uid: st.Uid, Gid: st.Gid, Size: st.Size, MtimeNs: st.Mtim.Nano(), Nlink: uint64(st.Nlink), Xattrs: xattrs(t, path)}
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFLNK:
			if e.Target, err = os.Readlink(path); err != nil {
				return err
			}
		case syscall.S_IFREG:
			sum := sha256.Sum256(readFile(t, path))
			e.SHA256 = hex.EncodeToString(sum[:])
		}
		out[rel] = e
		return nil
	})
	if err != nil {
		t.Fatalf("list %s: %v", root, err)
	}
	return out
}

// xattrs returns every extended attribute of path (not following symlinks).
func xattrs(t *testing.T, path string) map[string]string {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(path, buf)
	if err != nil {
		t.Fatalf("llistxattr %s: %v", path, err)
	}
	m := map[string]string{}
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" {
			continue
		}
		val := make([]byte, 64<<10)
		vn, err := unix.Lgetxattr(path, name, val)
		if err != nil {
			t.Fatalf("lgetxattr %s %s: %v", path, name, err)
		}
		m[name] = string(val[:vn])
	}
	return m
}

func unionKeys(a, b map[string]entry) []string {
	seen := map[string]bool{}
	for k := range a {
		seen[k] = true
	}
	for k := range b {
		seen[k] = true
	}
	keys := make([]string, 0, len(seen))
	for k := range seen {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// writeFile writes, fsyncs and closes a file, failing the test on error.
func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", path, err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close %s: %v", path, err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return b
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// freeAddr returns a loopback address with a port that was free a moment
// ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
