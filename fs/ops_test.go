package fs_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	dfs "github.com/datenlord/datenlord-go/fs"
	"github.com/datenlord/datenlord-go/fs/fstest"
	"github.com/datenlord/datenlord-go/meta"
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func wantErrno(t *testing.T, what string, err error, want ...syscall.Errno) {
	t.Helper()
	for _, w := range want {
		if errors.Is(err, w) {
			return
		}
	}
	t.Errorf("%s: got %v, want %v", what, err, want)
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestErrnos(t *testing.T) {
	h := fstest.Start(t)
	p := h.Path
	must(t, os.Mkdir(p("dir"), 0o755))
	must(t, os.WriteFile(p("dir", "f"), []byte("x"), 0o644))
	must(t, os.WriteFile(p("file"), []byte("x"), 0o644))
	must(t, os.WriteFile(p("other"), []byte("y"), 0o644))
	must(t, os.Mkdir(p("empty"), 0o755))
	long := strings.Repeat("n", 256)
	max := strings.Repeat("m", 255)

	getx := func(path, name string, size int) error {
		_, err := unix.Getxattr(path, name, make([]byte, size))
		return err
	}
	must(t, unix.Setxattr(p("file"), "user.k", []byte("value"), 0))

	tests := []struct {
		name string
		op   func() error
		want []syscall.Errno
	}{
		{"stat missing", func() error { _, err := os.Stat(p("nope")); return err }, []syscall.Errno{syscall.ENOENT}},
		{"open missing", func() error { _, err := os.Open(p("nope")); return err }, []syscall.Errno{syscall.ENOENT}},
		{"mkdir existing", func() error { return os.Mkdir(p("dir"), 0o755) }, []syscall.Errno{syscall.EEXIST}},
		{"create excl existing", func() error {
			_, err := os.OpenFile(p("file"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
			return err
		}, []syscall.Errno{syscall.EEXIST}},
		{"create under file", func() error { return os.WriteFile(p("file", "x"), nil, 0o644) }, []syscall.Errno{syscall.ENOTDIR}},
		{"rmdir file", func() error { return syscall.Rmdir(p("file")) }, []syscall.Errno{syscall.ENOTDIR}},
		{"unlink dir", func() error { return syscall.Unlink(p("dir")) }, []syscall.Errno{syscall.EISDIR}},
		{"open dir for write", func() error { _, err := os.OpenFile(p("dir"), os.O_WRONLY, 0); return err }, []syscall.Errno{syscall.EISDIR}},
		{"rmdir not empty", func() error { return syscall.Rmdir(p("dir")) }, []syscall.Errno{syscall.ENOTEMPTY}},
		{"create name too long", func() error { return os.WriteFile(p(long), nil, 0o644) }, []syscall.Errno{syscall.ENAMETOOLONG}},
		{"mkdir name too long", func() error { return os.Mkdir(p(long), 0o755) }, []syscall.Errno{syscall.ENAMETOOLONG}},
		{"stat name too long", func() error { _, err := os.Stat(p(long)); return err }, []syscall.Errno{syscall.ENAMETOOLONG}},
		{"create 255 byte name", func() error { return os.WriteFile(p(max), nil, 0o644) }, nil},
		{"rename missing", func() error { return os.Rename(p("nope"), p("x")) }, []syscall.Errno{syscall.ENOENT}},
		{"rename dir over file", func() error { return syscall.Rename(p("empty"), p("file")) }, []syscall.Errno{syscall.ENOTDIR}},
		{"rename file over dir", func() error { return syscall.Rename(p("file"), p("empty")) }, []syscall.Errno{syscall.EISDIR}},
		{"rename dir over non-empty dir", func() error { return syscall.Rename(p("empty"), p("dir")) }, []syscall.Errno{syscall.ENOTEMPTY, syscall.EEXIST}},
		{"rename noreplace existing", func() error {
			return unix.Renameat2(unix.AT_FDCWD, p("file"), unix.AT_FDCWD, p("other"), unix.RENAME_NOREPLACE)
		}, []syscall.Errno{syscall.EEXIST}},
		{"rename whiteout", func() error {
			return unix.Renameat2(unix.AT_FDCWD, p("file"), unix.AT_FDCWD, p("w"), unix.RENAME_WHITEOUT)
		}, []syscall.Errno{syscall.EINVAL, syscall.EPERM}},
		{"link dir", func() error { return os.Link(p("dir"), p("dirlink")) }, []syscall.Errno{syscall.EPERM}},
		{"link existing", func() error { return os.Link(p("file"), p("other")) }, []syscall.Errno{syscall.EEXIST}},
		{"readlink file", func() error { _, err := os.Readlink(p("file")); return err }, []syscall.Errno{syscall.EINVAL}},
		{"getxattr missing", func() error { return getx(p("file"), "user.nope", 64) }, []syscall.Errno{syscall.ENODATA}},
		{"getxattr small buffer", func() error { return getx(p("file"), "user.k", 2) }, []syscall.Errno{syscall.ERANGE}},
		{"setxattr create existing", func() error {
			return unix.Setxattr(p("file"), "user.k", []byte("v"), unix.XATTR_CREATE)
		}, []syscall.Errno{syscall.EEXIST}},
		{"setxattr replace missing", func() error {
			return unix.Setxattr(p("file"), "user.nope", []byte("v"), unix.XATTR_REPLACE)
		}, []syscall.Errno{syscall.ENODATA}},
		{"removexattr missing", func() error { return unix.Removexattr(p("file"), "user.nope") }, []syscall.Errno{syscall.ENODATA}},
		{"listxattr small buffer", func() error { _, err := unix.Listxattr(p("file"), make([]byte, 2)); return err }, []syscall.Errno{syscall.ERANGE}},
	}
	for _, tc := range tests {
		err := tc.op()
		if tc.want == nil {
			if err != nil {
				t.Errorf("%s: %v", tc.name, err)
			}
			continue
		}
		wantErrno(t, tc.name, err, tc.want...)
	}

	// Size probes report the needed size.
	n, err := unix.Getxattr(p("file"), "user.k", nil)
	if err != nil || n != 5 {
		t.Errorf("getxattr probe = %d, %v; want 5", n, err)
	}
	n, err = unix.Listxattr(p("file"), nil)
	if err != nil || n != len("user.k\x00") {
		t.Errorf("listxattr probe = %d, %v; want %d", n, err, len("user.k\x00"))
	}
	must(t, unix.Setxattr(p("file"), "user.k", []byte("v2"), unix.XATTR_REPLACE))
	buf := make([]byte, 16)
	n, err = unix.Getxattr(p("file"), "user.k", buf)
	if err != nil || string(buf[:n]) != "v2" {
		t.Errorf("getxattr after replace = %q, %v", buf[:n], err)
	}
	must(t, unix.Removexattr(p("file"), "user.k"))
	wantErrno(t, "getxattr removed", getx(p("file"), "user.k", 16), syscall.ENODATA)
}

func TestRenameFlags(t *testing.T) {
	h := fstest.Start(t)
	must(t, os.WriteFile(h.Path("a"), []byte("A"), 0o644))
	must(t, os.WriteFile(h.Path("b"), []byte("BB"), 0o644))
	must(t, unix.Renameat2(unix.AT_FDCWD, h.Path("a"), unix.AT_FDCWD, h.Path("b"), unix.RENAME_EXCHANGE))
	for name, want := range map[string]string{"a": "BB", "b": "A"} {
		got, err := os.ReadFile(h.Path(name))
		if err != nil || string(got) != want {
			t.Errorf("after exchange %s = %q, %v; want %q", name, got, err, want)
		}
	}
	wantErrno(t, "exchange with missing", unix.Renameat2(unix.AT_FDCWD, h.Path("a"), unix.AT_FDCWD, h.Path("zz"), unix.RENAME_EXCHANGE), syscall.ENOENT)
	must(t, unix.Renameat2(unix.AT_FDCWD, h.Path("a"), unix.AT_FDCWD, h.Path("c"), unix.RENAME_NOREPLACE))
	if _, err := os.Stat(h.Path("a")); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("a still there after rename: %v", err)
	}
	// Plain rename over an existing file replaces it.
	must(t, os.Rename(h.Path("c"), h.Path("b")))
	got, _ := os.ReadFile(h.Path("b"))
	if string(got) != "BB" {
		t.Errorf("b = %q after rename over, want BB", got)
	}
}

func TestHardLinkAndSymlink(t *testing.T) {
	h := fstest.Start(t)
	must(t, os.WriteFile(h.Path("f"), []byte("data"), 0o644))
	must(t, os.Link(h.Path("f"), h.Path("g")))
	must(t, os.Link(h.Path("f"), h.Path("h")))
	var st syscall.Stat_t
	must(t, syscall.Stat(h.Path("g"), &st))
	if st.Nlink != 3 {
		t.Errorf("nlink = %d, want 3", st.Nlink)
	}
	must(t, os.Remove(h.Path("f")))
	must(t, syscall.Stat(h.Path("h"), &st))
	if st.Nlink != 2 {
		t.Errorf("nlink after unlink = %d, want 2", st.Nlink)
	}
	got, err := os.ReadFile(h.Path("h"))
	if err != nil || string(got) != "data" {
		t.Errorf("read link = %q, %v", got, err)
	}
	must(t, os.Symlink("g", h.Path("s")))
	target, err := os.Readlink(h.Path("s"))
	if err != nil || target != "g" {
		t.Errorf("readlink = %q, %v", target, err)
	}
	got, err = os.ReadFile(h.Path("s"))
	if err != nil || string(got) != "data" {
		t.Errorf("read through symlink = %q, %v", got, err)
	}
	wantErrno(t, "symlink target too long", os.Symlink(strings.Repeat("t", 4096), h.Path("s2")), syscall.ENAMETOOLONG)
}

func TestSparseHugeFile(t *testing.T) {
	h := fstest.Start(t)
	f, err := os.Create(h.Path("sparse"))
	must(t, err)
	defer f.Close()
	const off = 5 << 30
	data := []byte("far away")
	_, err = f.WriteAt(data, off)
	must(t, err)
	_, err = f.WriteAt([]byte("start"), 100)
	must(t, err)
	must(t, f.Sync())
	fi, err := f.Stat()
	must(t, err)
	if fi.Size() != off+int64(len(data)) {
		t.Fatalf("size = %d, want %d", fi.Size(), off+len(data))
	}
	check := func(at int64, want []byte) {
		t.Helper()
		got := make([]byte, len(want))
		if _, err := f.ReadAt(got, at); err != nil && err != io.EOF {
			t.Fatalf("ReadAt(%d): %v", at, err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("ReadAt(%d) = %q, want %q", at, got, want)
		}
	}
	check(off, data)
	check(100, []byte("start"))
	check(0, make([]byte, 100))
	check(off-4096, make([]byte, 4096))
	check(3<<30, make([]byte, 70000))
	must(t, f.Close())
	// Again from the store after a restart.
	h.Restart()
	f, err = os.Open(h.Path("sparse"))
	must(t, err)
	check(off, data)
	check(off-100, make([]byte, 100))
	must(t, f.Close())
}

func TestAppend(t *testing.T) {
	h := fstest.Start(t)
	must(t, os.WriteFile(h.Path("log"), []byte("one\n"), 0o644))
	a, err := os.OpenFile(h.Path("log"), os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	b, err := os.OpenFile(h.Path("log"), os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	_, err = a.WriteString("two\n")
	must(t, err)
	_, err = b.WriteString("three\n")
	must(t, err)
	_, err = a.WriteString("four\n")
	must(t, err)
	must(t, a.Close())
	must(t, b.Close())
	got, err := os.ReadFile(h.Path("log"))
	must(t, err)
	if string(got) != "one\ntwo\nthree\nfour\n" {
		t.Errorf("content = %q", got)
	}
}

func TestTruncate(t *testing.T) {
	h := fstest.Start(t, fstest.WithBlockSize(64<<10))
	content := randBytes(1, 300<<10)
	p := h.Path("t")
	must(t, os.WriteFile(p, content, 0o644))

	// Closed file: down into the middle of a block, then up again.
	must(t, os.Truncate(p, 100000))
	must(t, os.Truncate(p, 200000))
	got, err := os.ReadFile(p)
	must(t, err)
	want := append(append([]byte{}, content[:100000]...), make([]byte, 100000)...)
	if !bytes.Equal(got, want) {
		t.Fatalf("closed truncate down/up: content differs (len %d)", len(got))
	}

	// Open file with dirty data: ftruncate down and up, write past.
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	must(t, err)
	_, err = f.WriteAt(bytes.Repeat([]byte{7}, 150000), 10)
	must(t, err)
	must(t, f.Truncate(50000))
	must(t, f.Truncate(70000))
	_, err = f.WriteAt([]byte("tail"), 90000)
	must(t, err)
	want = append(append(append([]byte{}, want[:10]...), bytes.Repeat([]byte{7}, 50000-10)...), make([]byte, 40000)...)
	want = append(want, []byte("tail")...)
	got = make([]byte, 200000)
	n, err := f.ReadAt(got, 0)
	if err != io.EOF {
		must(t, err)
	}
	if !bytes.Equal(got[:n], want) {
		t.Fatalf("open truncate: content differs (len %d want %d)", n, len(want))
	}
	must(t, f.Close())
	fi, err := os.Stat(p)
	must(t, err)
	if fi.Size() != int64(len(want)) {
		t.Errorf("size = %d, want %d", fi.Size(), len(want))
	}
	// O_TRUNC on open.
	f, err = os.OpenFile(p, os.O_RDWR|os.O_TRUNC, 0)
	must(t, err)
	fi, err = f.Stat()
	must(t, err)
	if fi.Size() != 0 {
		t.Errorf("size after O_TRUNC = %d", fi.Size())
	}
	must(t, f.Close())
	h.Restart()
	fi, err = os.Stat(p)
	must(t, err)
	if fi.Size() != 0 {
		t.Errorf("size after restart = %d", fi.Size())
	}
}

func TestFallocate(t *testing.T) {
	h := fstest.Start(t)
	f, err := os.Create(h.Path("fa"))
	must(t, err)
	defer f.Close()
	_, err = f.Write([]byte("hello"))
	must(t, err)
	must(t, unix.Fallocate(int(f.Fd()), 0, 0, 1<<20))
	fi, err := f.Stat()
	must(t, err)
	if fi.Size() != 1<<20 {
		t.Errorf("size after fallocate = %d", fi.Size())
	}
	buf := make([]byte, 10)
	_, err = f.ReadAt(buf, 0)
	must(t, err)
	if string(buf) != "hello\x00\x00\x00\x00\x00" {
		t.Errorf("content = %q", buf)
	}
	must(t, unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, 4<<20))
	must(t, unix.Fallocate(int(f.Fd()), 0, 0, 10)) // inside: no change
	fi, _ = f.Stat()
	if fi.Size() != 1<<20 {
		t.Errorf("size after keep-size fallocate = %d", fi.Size())
	}
	wantErrno(t, "punch hole", unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 10), syscall.EOPNOTSUPP)
}

func TestSpecialFiles(t *testing.T) {
	h := fstest.Start(t)
	must(t, syscall.Mkfifo(h.Path("fifo"), 0o644))
	must(t, syscall.Mknod(h.Path("chr"), syscall.S_IFCHR|0o600, int(unix.Mkdev(1, 3))))
	must(t, syscall.Mknod(h.Path("sock"), syscall.S_IFSOCK|0o600, 0))
	must(t, syscall.Mknod(h.Path("reg"), syscall.S_IFREG|0o600, 0))
	for name, typ := range map[string]uint32{"fifo": syscall.S_IFIFO, "chr": syscall.S_IFCHR, "sock": syscall.S_IFSOCK, "reg": syscall.S_IFREG} {
		var st syscall.Stat_t
		must(t, syscall.Lstat(h.Path(name), &st))
		if st.Mode&syscall.S_IFMT != typ {
			t.Errorf("%s: mode %o, want type %o", name, st.Mode, typ)
		}
		if name == "chr" && st.Rdev != unix.Mkdev(1, 3) {
			t.Errorf("chr rdev = %x", st.Rdev)
		}
	}
	// A fifo works as a pipe (the kernel implements it).
	done := make(chan error, 1)
	go func() {
		w, err := os.OpenFile(h.Path("fifo"), os.O_WRONLY, 0)
		if err == nil {
			_, err = w.WriteString("through the pipe")
			w.Close()
		}
		done <- err
	}()
	r, err := os.Open(h.Path("fifo"))
	must(t, err)
	got, err := io.ReadAll(r)
	r.Close()
	must(t, err)
	must(t, <-done)
	if string(got) != "through the pipe" {
		t.Errorf("fifo read %q", got)
	}
}

func TestAttrs(t *testing.T) {
	h := fstest.Start(t)
	p := h.Path("f")
	must(t, os.WriteFile(p, []byte("x"), 0o644))
	must(t, os.Chmod(p, 0o600))
	must(t, os.Chown(p, 1234, 5678))
	var st syscall.Stat_t
	must(t, syscall.Stat(p, &st))
	if st.Mode&07777 != 0o600 || st.Uid != 1234 || st.Gid != 5678 {
		t.Errorf("mode %o uid %d gid %d", st.Mode, st.Uid, st.Gid)
	}
	ts := []unix.Timespec{{Sec: 1000, Nsec: 5}, {Sec: 2000, Nsec: 7}}
	must(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, 0))
	must(t, syscall.Stat(p, &st))
	if st.Atim.Sec != 1000 || st.Atim.Nsec != 5 || st.Mtim.Sec != 2000 || st.Mtim.Nsec != 7 {
		t.Errorf("times: atime %v mtime %v", st.Atim, st.Mtim)
	}
	before := time.Now().Add(-time.Second).Unix()
	must(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{{Nsec: unix.UTIME_NOW}, {Nsec: unix.UTIME_OMIT}}, 0))
	must(t, syscall.Stat(p, &st))
	if st.Atim.Sec < before || st.Mtim.Sec != 2000 {
		t.Errorf("UTIME_NOW/OMIT: atime %v mtime %v", st.Atim, st.Mtim)
	}
	// mtime set while dirty data is pending survives the flush.
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	must(t, err)
	_, err = f.Write([]byte("dirty"))
	must(t, err)
	must(t, unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Sec: 3000}}, 0))
	must(t, f.Close())
	must(t, syscall.Stat(p, &st))
	if st.Mtim.Sec != 3000 || st.Size != 5 {
		t.Errorf("after close: mtime %v size %d", st.Mtim, st.Size)
	}
	// A directory's mode.
	must(t, os.Mkdir(h.Path("d"), 0o700))
	must(t, os.Chmod(h.Path("d"), 0o751))
	must(t, syscall.Stat(h.Path("d"), &st))
	if st.Mode != syscall.S_IFDIR|0o751 {
		t.Errorf("dir mode %o", st.Mode)
	}
}

func TestStatfs(t *testing.T) {
	h := fstest.Start(t)
	must(t, os.WriteFile(h.Path("f"), make([]byte, 1<<20), 0o644))
	var s unix.Statfs_t
	must(t, unix.Statfs(h.Mountpoint, &s))
	if s.Type != 0x65735546 || s.Bsize <= 0 || s.Blocks == 0 || s.Bfree > s.Blocks || s.Bfree == s.Blocks ||
		s.Files == 0 || s.Ffree >= s.Files || s.Namelen != 255 {
		t.Errorf("statfs = %+v", s)
	}
}

// TestLocks checks local-node lock semantics (implemented by the kernel
// for this mount): open file description locks and flock conflict between
// two open file descriptions, classic POSIX locks between two processes.
func TestLocks(t *testing.T) {
	h := fstest.Start(t)
	p := h.Path("lock")
	must(t, os.WriteFile(p, []byte("x"), 0o644))
	f1, err := os.OpenFile(p, os.O_RDWR, 0)
	must(t, err)
	defer f1.Close()
	f2, err := os.OpenFile(p, os.O_RDWR, 0)
	must(t, err)
	defer f2.Close()

	// flock.
	must(t, unix.Flock(int(f1.Fd()), unix.LOCK_EX|unix.LOCK_NB))
	wantErrno(t, "flock conflict", unix.Flock(int(f2.Fd()), unix.LOCK_EX|unix.LOCK_NB), syscall.EWOULDBLOCK)
	wantErrno(t, "flock shared conflict", unix.Flock(int(f2.Fd()), unix.LOCK_SH|unix.LOCK_NB), syscall.EWOULDBLOCK)
	must(t, unix.Flock(int(f1.Fd()), unix.LOCK_UN))
	must(t, unix.Flock(int(f2.Fd()), unix.LOCK_SH|unix.LOCK_NB))
	must(t, unix.Flock(int(f2.Fd()), unix.LOCK_UN))

	// OFD locks: per open file description.
	wr := unix.Flock_t{Type: unix.F_WRLCK, Whence: 0, Start: 0, Len: 10}
	must(t, unix.FcntlFlock(f1.Fd(), unix.F_OFD_SETLK, &wr))
	rd := unix.Flock_t{Type: unix.F_RDLCK, Start: 5, Len: 1}
	wantErrno(t, "OFD conflict", unix.FcntlFlock(f2.Fd(), unix.F_OFD_SETLK, &rd), syscall.EAGAIN, syscall.EACCES)
	get := unix.Flock_t{Type: unix.F_WRLCK, Start: 0, Len: 0}
	must(t, unix.FcntlFlock(f2.Fd(), unix.F_OFD_GETLK, &get))
	if get.Type != unix.F_WRLCK || get.Start != 0 || get.Len != 10 {
		t.Errorf("OFD GETLK = %+v", get)
	}
	ok := unix.Flock_t{Type: unix.F_WRLCK, Start: 10, Len: 5}
	must(t, unix.FcntlFlock(f2.Fd(), unix.F_OFD_SETLK, &ok))
	un := unix.Flock_t{Type: unix.F_UNLCK, Start: 0, Len: 0}
	must(t, unix.FcntlFlock(f1.Fd(), unix.F_OFD_SETLK, &un))
	must(t, unix.FcntlFlock(f2.Fd(), unix.F_OFD_SETLK, &un))

	// Classic POSIX locks between processes: this process holds a write
	// lock, a child process must see the conflict.
	posix := unix.Flock_t{Type: unix.F_WRLCK, Start: 0, Len: 0}
	must(t, unix.FcntlFlock(f1.Fd(), unix.F_SETLK, &posix))
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "DATENLORD_LOCK_HELPER="+p)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Errorf("lock helper: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "CONFLICT") {
		t.Errorf("child process did not see the POSIX lock conflict:\n%s", out)
	}
}

// TestMain runs the lock helper instead of the tests when TestLocks
// starts this binary as its second process.
func TestMain(m *testing.M) {
	if p := os.Getenv("DATENLORD_LOCK_HELPER"); p != "" {
		os.Exit(lockHelper(p))
	}
	os.Exit(m.Run())
}

// lockHelper is the second process of TestLocks: it tries to take a read
// lock on p, which the parent holds a write lock on, and prints CONFLICT
// when F_SETLK refuses and F_GETLK names the parent as the holder.
func lockHelper(p string) int {
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		fmt.Println("open:", err)
		return 1
	}
	defer f.Close()
	lk := unix.Flock_t{Type: unix.F_RDLCK, Start: 0, Len: 0}
	err = unix.FcntlFlock(f.Fd(), unix.F_SETLK, &lk)
	if errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES) {
		get := unix.Flock_t{Type: unix.F_RDLCK}
		if err := unix.FcntlFlock(f.Fd(), unix.F_GETLK, &get); err != nil {
			fmt.Println("F_GETLK:", err)
			return 1
		}
		if get.Type == unix.F_WRLCK && get.Pid == int32(os.Getppid()) {
			fmt.Println("CONFLICT")
		} else {
			fmt.Printf("GETLK = %+v, parent %d\n", get, os.Getppid())
		}
		return 0
	}
	fmt.Printf("F_SETLK = %v\n", err)
	return 0
}

func TestReadDirLarge(t *testing.T) {
	h := fstest.Start(t)
	must(t, os.Mkdir(h.Path("big"), 0o755))
	want := map[string]bool{}
	for i := range 1000 {
		name := fmt.Sprintf("entry-%04d-%s", i, strings.Repeat("x", i%50))
		want[name] = true
		must(t, os.WriteFile(h.Path("big", name), nil, 0o644))
	}
	d, err := os.Open(h.Path("big"))
	must(t, err)
	defer d.Close()
	seen := map[string]bool{}
	for {
		names, err := d.Readdirnames(37) // many small getdents calls
		for _, n := range names {
			if seen[n] {
				t.Errorf("duplicate %q", n)
			}
			seen[n] = true
		}
		if err == io.EOF || len(names) == 0 {
			break
		}
		must(t, err)
	}
	if len(seen) != len(want) {
		t.Errorf("got %d entries, want %d", len(seen), len(want))
	}
	for n := range want {
		if !seen[n] {
			t.Errorf("missing %q", n)
		}
	}
	entries, err := os.ReadDir(h.Path("big")) // readdirplus path with types
	must(t, err)
	if len(entries) != 1000 || entries[0].Type().IsDir() {
		t.Errorf("ReadDir: %d entries", len(entries))
	}
}

func TestReadWriteAcrossHandles(t *testing.T) {
	h := fstest.Start(t, fstest.WithBlockSize(64<<10), fstest.WithPageSize(16<<10))
	p := h.Path("shared")
	w, err := os.Create(p)
	must(t, err)
	defer w.Close()
	data := randBytes(2, 500000)
	_, err = w.Write(data)
	must(t, err)
	r, err := os.Open(p)
	must(t, err)
	defer r.Close()
	got, err := io.ReadAll(r)
	must(t, err)
	if !bytes.Equal(got, data) {
		t.Fatalf("read before close through another handle: %d bytes, differs", len(got))
	}
	// Overwrite unaligned ranges, partly flushed, partly dirty.
	must(t, w.Sync())
	patch := randBytes(3, 70000)
	_, err = w.WriteAt(patch, 12345)
	must(t, err)
	copy(data[12345:], patch)
	got = make([]byte, len(data))
	_, err = r.ReadAt(got, 0)
	must(t, err)
	if !bytes.Equal(got, data) {
		t.Fatal("read of patched dirty data differs")
	}
	must(t, w.Close())
	must(t, r.Close())
	h.Restart()
	got, err = os.ReadFile(p)
	must(t, err)
	if !bytes.Equal(got, data) {
		t.Fatal("content after restart differs")
	}
}

func TestFsyncPersistsAcrossRestart(t *testing.T) {
	h := fstest.Start(t)
	p := h.Path("durable")
	f, err := os.Create(p)
	must(t, err)
	data := randBytes(4, 3<<20+17)
	_, err = f.Write(data)
	must(t, err)
	must(t, f.Sync())
	// fsync returned: size and blocks are committed before any close.
	var st syscall.Stat_t
	must(t, syscall.Fstat(int(f.Fd()), &st))
	a, err := h.Meta.GetAttr(context.Background(), meta.Ino(st.Ino))
	must(t, err)
	if a.Size != uint64(len(data)) {
		t.Errorf("committed size after fsync = %d, want %d", a.Size, len(data))
	}
	must(t, f.Close())
	h.Restart()
	got, err := os.ReadFile(p)
	must(t, err)
	if !bytes.Equal(got, data) {
		t.Fatalf("after restart: %d bytes, want %d, equal=%v", len(got), len(data), bytes.Equal(got, data))
	}
}

func TestUnlinkWhileOpen(t *testing.T) {
	h := fstest.Start(t)
	p := h.Path("doomed")
	data := randBytes(5, 1<<20)
	must(t, os.WriteFile(p, data, 0o644))
	var st syscall.Stat_t
	must(t, syscall.Stat(p, &st))
	ino := meta.Ino(st.Ino)
	ctx := context.Background()
	blocks, err := h.Meta.Blocks(ctx, ino)
	must(t, err)
	if len(blocks) == 0 {
		t.Fatal("no blocks")
	}
	f, err := os.Open(p)
	must(t, err)
	must(t, os.Remove(p))
	if idx, ok := h.FS.OldestOpenIndex(); !ok || idx == 0 {
		t.Errorf("OldestOpenIndex = %d, %v with an open file", idx, ok)
	}
	got, err := io.ReadAll(f)
	must(t, err)
	if !bytes.Equal(got, data) {
		t.Error("read of unlinked open file differs")
	}
	must(t, syscall.Fstat(int(f.Fd()), &st))
	if st.Nlink != 0 {
		t.Errorf("nlink of unlinked open file = %d", st.Nlink)
	}
	if _, err := h.Meta.GetAttr(ctx, ino); err != nil {
		t.Errorf("orphan purged while open: %v", err)
	}
	must(t, f.Close())
	// Release is asynchronous to close(2): wait for the purge.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := h.Meta.GetAttr(ctx, ino)
		if errors.Is(err, syscall.ENOENT) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("inode not purged after close: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, ok := h.FS.OldestOpenIndex(); ok {
		t.Error("OldestOpenIndex reports an open file after close")
	}
	garbage, err := h.Meta.Garbage(ctx, 1000)
	must(t, err)
	onList := map[meta.BlockID]bool{}
	for _, g := range garbage {
		onList[g.ID] = true
	}
	for _, ref := range blocks {
		if !onList[ref.ID] {
			t.Errorf("block %d of the purged file is not garbage", ref.ID)
		}
	}
	orphans, err := h.Meta.Orphans(ctx)
	must(t, err)
	if len(orphans) != 0 {
		t.Errorf("orphans left: %v", orphans)
	}
}

func TestOverwriteMakesGarbage(t *testing.T) {
	h := fstest.Start(t)
	p := h.Path("f")
	must(t, os.WriteFile(p, []byte("first"), 0o644))
	must(t, os.WriteFile(p, []byte("second"), 0o644))
	got, err := os.ReadFile(p)
	must(t, err)
	if string(got) != "second" {
		t.Errorf("content %q", got)
	}
	g, err := h.Meta.Garbage(context.Background(), 100)
	must(t, err)
	if len(g) == 0 {
		t.Error("no garbage after overwrite")
	}
	var inflight int
	h.FS.InFlightBlocks(func(meta.BlockID) { inflight++ })
	if inflight != 0 {
		t.Errorf("%d blocks in flight while idle", inflight)
	}
}

func TestDirtyLimitBackPressure(t *testing.T) {
	h := fstest.Start(t, fstest.WithBlockSize(64<<10), fstest.WithFSConfig(func(c *dfs.Config) {
		c.DirtyLimit = 1 << 20
	}))
	data := randBytes(6, 8<<20)
	f1, err := os.Create(h.Path("a"))
	must(t, err)
	f2, err := os.Create(h.Path("b"))
	must(t, err)
	for off := 0; off < len(data); off += 128 << 10 {
		_, err = f1.Write(data[off : off+128<<10])
		must(t, err)
		_, err = f2.Write(data[off : off+128<<10])
		must(t, err)
	}
	must(t, f1.Close())
	must(t, f2.Close())
	for _, n := range []string{"a", "b"} {
		got, err := os.ReadFile(h.Path(n))
		must(t, err)
		if !bytes.Equal(got, data) {
			t.Errorf("%s differs", n)
		}
	}
}

func TestMountpointErrors(t *testing.T) {
	h := fstest.Start(t)
	ctx := context.Background()
	file := filepath.Join(t.TempDir(), "file")
	must(t, os.WriteFile(file, nil, 0o644))
	for _, tc := range []struct {
		mp, want string
	}{
		{"/nonexistent/datenlord", "does not exist"},
		{file, "not a directory"},
		{h.Mountpoint, "already mounted"},
	} {
		_, err := dfs.Mount(ctx, dfs.Config{Mountpoint: tc.mp}, h.Meta, h.Cache, h.Store)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Mount(%s) = %v, want error containing %q", tc.mp, err, tc.want)
		}
	}
}

// TestENOSPC puts the store on a tiny tmpfs: a flush that cannot store its
// blocks fails with ENOSPC (or EIO), does not hang, and leaves the
// metadata consistent; after space is freed, writes work again.
func TestENOSPC(t *testing.T) {
	dir := t.TempDir()
	storeDir := filepath.Join(dir, "tiny")
	must(t, os.Mkdir(storeDir, 0o755))
	if err := unix.Mount("tmpfs", storeDir, "tmpfs", 0, "size=2m"); err != nil {
		t.Skipf("SKIP: cannot mount tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(storeDir, unix.MNT_DETACH) })
	h := fstest.Start(t, fstest.WithStoreDir(storeDir), fstest.WithBlockSize(64<<10))

	must(t, os.WriteFile(h.Path("small"), []byte("fits"), 0o644))
	f, err := os.Create(h.Path("big"))
	must(t, err)
	_, err = f.Write(randBytes(7, 4<<20)) // buffered: fits in the dirty budget
	must(t, err)
	start := time.Now()
	err = f.Sync()
	wantErrno(t, "fsync on full store", err, syscall.ENOSPC, syscall.EIO)
	if time.Since(start) > 20*time.Second {
		t.Errorf("fsync took %v", time.Since(start))
	}
	// Metadata is consistent: the file has its old (empty) committed state.
	fi, err := os.Stat(h.Path("small"))
	must(t, err)
	if fi.Size() != 4 {
		t.Errorf("small size %d", fi.Size())
	}
	// Drop the dirty data (close fails the same way) and the file.
	_ = f.Close()
	must(t, os.Remove(h.Path("big")))
	// Blocks written by the failed flush were never committed; a store
	// sweep (the GC) deletes them. Free the space by hand here (the file
	// system may be deleting blocks of the removed file meanwhile: a file
	// that is gone already is fine).
	must(t, filepath.WalkDir(storeDir, func(path string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			err = os.Remove(path)
		}
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}))
	must(t, os.WriteFile(h.Path("again"), []byte("space again"), 0o644))
	got, err := os.ReadFile(h.Path("again"))
	must(t, err)
	if string(got) != "space again" {
		t.Errorf("again = %q", got)
	}
}

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := fstest.Start(t, fstest.WithFSConfig(func(c *dfs.Config) { c.Registerer = reg }))
	must(t, os.WriteFile(h.Path("m"), []byte("x"), 0o644))
	_, _ = os.Stat(h.Path("missing"))
	mfs, err := reg.Gather()
	must(t, err)
	found := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "datenlord_fuse_ops_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var op, outcome string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "op":
					op = l.GetValue()
				case "outcome":
					outcome = l.GetValue()
				}
			}
			found[op+"/"+outcome] = m.GetCounter().GetValue()
		}
	}
	if found["create/ok"] < 1 || found["write/ok"] < 1 || found["lookup/errno"] < 1 {
		t.Errorf("ops counters: create/ok=%v write/ok=%v lookup/errno=%v", found["create/ok"], found["write/ok"], found["lookup/errno"])
	}
}

// TestTmpfile checks O_TMPFILE: the file is in no directory and purged on
// close, unless linkat(2) names it first, after which it is an ordinary
// file whose content survives a restart.
func TestTmpfile(t *testing.T) {
	h := fstest.Start(t)
	ctx := context.Background()
	waitPurged := func(ino meta.Ino) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, err := h.Meta.GetAttr(ctx, ino)
			if errors.Is(err, syscall.ENOENT) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("tmpfile inode %d not purged after close: %v", ino, err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// Never named: gone after close.
	fd, err := unix.Open(h.Mountpoint, unix.O_TMPFILE|unix.O_RDWR, 0o600)
	must(t, err)
	var st unix.Stat_t
	must(t, unix.Fstat(fd, &st))
	if st.Nlink != 0 {
		t.Errorf("tmpfile nlink = %d, want 0", st.Nlink)
	}
	must(t, unix.Close(fd))
	waitPurged(meta.Ino(st.Ino))

	// Named with linkat through /proc/self/fd: an ordinary file.
	fd, err = unix.Open(h.Mountpoint, unix.O_TMPFILE|unix.O_RDWR, 0o640)
	must(t, err)
	data := randBytes(9, 300<<10)
	_, err = unix.Pwrite(fd, data, 0)
	must(t, err)
	// No fsync: close after linkat must flush what is still dirty.
	must(t, unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), unix.AT_FDCWD, h.Path("named"), unix.AT_SYMLINK_FOLLOW))
	must(t, unix.Close(fd))
	orphans, err := h.Meta.Orphans(ctx)
	must(t, err)
	if len(orphans) != 0 {
		t.Errorf("orphans after naming the tmpfile: %v", orphans)
	}
	h.Restart()
	got, err := os.ReadFile(h.Path("named"))
	must(t, err)
	if !bytes.Equal(got, data) {
		t.Error("named tmpfile content differs after restart")
	}
	fi, err := os.Stat(h.Path("named"))
	must(t, err)
	if fi.Mode().Perm() != 0o640 || fi.Sys().(*syscall.Stat_t).Nlink != 1 {
		t.Errorf("named tmpfile mode %v nlink %d, want 0640 and 1", fi.Mode(), fi.Sys().(*syscall.Stat_t).Nlink)
	}
}

// counterValue returns the value of a counter without labels, or 0.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	must(t, err)
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// TestReadahead checks that a sequential reader gets blocks prefetched
// (and reads the right bytes while prefetches run), and that random reads
// start none.
func TestReadahead(t *testing.T) {
	var reg *prometheus.Registry
	h := fstest.Start(t, fstest.WithBlockSize(64<<10), fstest.WithPageSize(16<<10),
		fstest.WithFSConfig(func(c *dfs.Config) {
			reg = prometheus.NewRegistry() // a fresh one for every mount
			c.Registerer = reg
		}))
	data := randBytes(11, 2<<20+1234)
	must(t, os.WriteFile(h.Path("seq"), data, 0o644))
	h.Restart() // cold memory cache

	f, err := os.Open(h.Path("seq"))
	must(t, err)
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 8<<10)
	for range 50 {
		off := rng.Int64N(int64(len(data) - len(buf)))
		_, err := f.ReadAt(buf, off)
		must(t, err)
		if !bytes.Equal(buf, data[off:off+int64(len(buf))]) {
			t.Fatalf("random read at %d differs", off)
		}
	}
	must(t, f.Close())
	if n := counterValue(t, reg, "datenlord_readahead_blocks_total"); n != 0 {
		t.Errorf("random reads started %v block prefetches, want 0", n)
	}

	got, err := os.ReadFile(h.Path("seq"))
	must(t, err)
	if !bytes.Equal(got, data) {
		t.Fatal("sequential read differs")
	}
	if n := counterValue(t, reg, "datenlord_readahead_blocks_total"); n < 8 {
		t.Errorf("a 32-block sequential read started %v block prefetches, want at least 8", n)
	}
}

// TestWriteBehindRewrite rewrites part of a block after a sequential write
// completed it (so its write-behind upload is stale): the file reads the
// new bytes, before and after a restart, and the stale upload is deleted
// from the store, which ends up holding only the file's two blocks.
func TestWriteBehindRewrite(t *testing.T) {
	const bs = 64 << 10
	h := fstest.Start(t, fstest.WithBlockSize(bs), fstest.WithPageSize(16<<10))
	data := randBytes(21, 2*bs)
	f, err := os.Create(h.Path("wb"))
	must(t, err)
	_, err = f.Write(data) // completes blocks 0 and 1: both written behind
	must(t, err)
	patch := randBytes(22, 100)
	_, err = f.WriteAt(patch, 10)
	must(t, err)
	copy(data[10:], patch)
	must(t, f.Sync())
	got := make([]byte, len(data))
	_, err = f.ReadAt(got, 0)
	must(t, err)
	must(t, f.Close())
	if !bytes.Equal(got, data) {
		t.Fatal("content differs after rewriting a written-behind block")
	}
	count := func() int {
		n := 0
		must(t, h.Store.List(context.Background(), func(uint64) error { n++; return nil }))
		return n
	}
	deadline := time.Now().Add(5 * time.Second)
	for count() != 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := count(); n != 2 {
		t.Errorf("store holds %d blocks, want the file's 2 (the stale upload deleted)", n)
	}
	h.Restart()
	got, err = os.ReadFile(h.Path("wb"))
	must(t, err)
	if !bytes.Equal(got, data) {
		t.Fatal("content differs after restart")
	}
}
