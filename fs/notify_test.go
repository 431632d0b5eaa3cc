package fs_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/datenlord/datenlord-go/fs"
	"github.com/datenlord/datenlord-go/fs/fstest"
	"github.com/datenlord/datenlord-go/meta"
)

// TestNotifierInvalidatesKernelCaches changes metadata behind the
// kernel's back, as another node would, with attribute and entry caching
// of an hour: only the notifications can make the changes visible.
func TestNotifierInvalidatesKernelCaches(t *testing.T) {
	h := fstest.Start(t, fstest.WithFSConfig(func(c *fs.Config) {
		c.AttrTimeout = time.Hour
		c.EntryTimeout = time.Hour
	}))
	ctx := context.Background()
	n := fs.NewNotifier("self", nil)
	defer n.Close()
	n.Attach(h.FS)

	p := h.Path("f")
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	ino := meta.Ino(st.Sys().(*syscall.Stat_t).Ino)
	if _, err := h.Meta.SetAttr(ctx, ino, meta.SetAttrRequest{Valid: meta.SetSize, Size: 12345, Now: 1}); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(p); st.Size() != 0 {
		t.Fatalf("size %d without a notification: the kernel cache is not in the way, the test proves nothing", st.Size())
	}
	// A change of this node's own is not notified (its kernel saw it).
	n.OnChange("self", []meta.Change{{Kind: meta.ChangeInode, Ino: ino}})
	n.OnChange("other", []meta.Change{{Kind: meta.ChangeInode, Ino: ino}})
	waitFor(t, "new size after InodeNotify", func() bool {
		st, err := os.Stat(p)
		return err == nil && st.Size() == 12345
	})

	// An entry removed elsewhere disappears.
	if _, err := h.Meta.Unlink(ctx, meta.RootIno, "f", 2); err != nil {
		t.Fatal(err)
	}
	n.OnChange("other", []meta.Change{{Kind: meta.ChangeEntryRemoved, Parent: meta.RootIno, Name: "f", Ino: ino}})
	waitFor(t, "ENOENT after DeleteNotify", func() bool {
		_, err := os.Stat(p)
		return errors.Is(err, os.ErrNotExist)
	})

	// An entry replaced elsewhere (rename over it) shows the new inode.
	for _, name := range []string{"a", "b"} {
		if err := os.WriteFile(h.Path(name), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got, _ := os.ReadFile(h.Path("b")); string(got) != "b" {
		t.Fatalf("b reads %q", got)
	}
	if _, err := h.Meta.Rename(ctx, meta.RootIno, "a", meta.RootIno, "b", 0, 3); err != nil {
		t.Fatal(err)
	}
	n.OnChange("other", []meta.Change{
		{Kind: meta.ChangeEntryRemoved, Parent: meta.RootIno, Name: "a"},
		{Kind: meta.ChangeEntry, Parent: meta.RootIno, Name: "b"},
	})
	waitFor(t, "renamed-over entry", func() bool {
		got, err := os.ReadFile(filepath.Join(h.Mountpoint, "b"))
		return err == nil && string(got) == "a"
	})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 3s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
