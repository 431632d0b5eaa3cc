package fs_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/datenlord/datenlord-go/fs/fstest"
	"github.com/datenlord/datenlord-go/meta"
)

// TestFilesWriteRenameRead writes a multi-block file through the non-FUSE
// API, renames it over an existing file, and reads it back through the API
// and through the mount; an aborted writer leaves nothing behind.
func TestFilesWriteRenameRead(t *testing.T) {
	h := fstest.Start(t)
	ctx := t.Context()
	x := h.FS.Files()
	dir, err := x.Mkdir(ctx, meta.RootIno, "d", 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := x.Mkdir(ctx, meta.RootIno, "d", 0o755); err != nil || again.Ino != dir.Ino {
		t.Fatalf("Mkdir of an existing directory: %v %v", again.Ino, err)
	}
	// The old content, read through the mount first so the kernel caches it.
	if err := os.WriteFile(filepath.Join(h.Mountpoint, "d/f"), []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(h.Mountpoint, "d/f")); string(b) != "old" {
		t.Fatalf("read %q", b)
	}
	data := make([]byte, 3*x.BlockSize()+123)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	w, err := x.Create(ctx, dir.Ino, "tmp", 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if n, err := w.Write(ctx, data); err != nil || n != len(data) {
		t.Fatalf("write: %d %v", n, err)
	}
	a, err := w.Commit(ctx)
	if err != nil || a.Size != uint64(len(data)) {
		t.Fatalf("commit: %+v %v", a, err)
	}
	if err := x.Rename(ctx, dir.Ino, "tmp", dir.Ino, "f"); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if b, err := os.ReadFile(filepath.Join(h.Mountpoint, "d/f")); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("read through the mount after the rename: %v, %d bytes (kernel cache not invalidated?)", err, len(b))
	}
	r, err := x.Open(ctx, a.Ino)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data)+10)
	n, err := r.ReadAt(ctx, got, 0)
	r.Close()
	if err != io.EOF || n != len(data) || !bytes.Equal(got[:n], data) {
		t.Fatalf("ReadAt: %d %v", n, err)
	}
	// Abort.
	w2, err := x.Create(ctx, dir.Ino, "aborted", 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w2.Write(ctx, data[:1000]); err != nil {
		t.Fatal(err)
	}
	w2.Abort(ctx)
	if _, err := x.Lookup(ctx, dir.Ino, "aborted"); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("lookup after abort: %v", err)
	}
	if err := x.Unlink(ctx, dir.Ino, "f"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(h.Mountpoint, "d/f")); !os.IsNotExist(err) {
		t.Fatalf("stat through the mount after Unlink: %v", err)
	}
	if err := x.Rmdir(ctx, meta.RootIno, "d"); err != nil {
		t.Fatal(err)
	}
}
