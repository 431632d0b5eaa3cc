package gc_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/datenlord/datenlord-go/fs/fstest"
	"github.com/datenlord/datenlord-go/gc"
	"github.com/datenlord/datenlord-go/meta"
)

const blockSize = 64 << 10

func randBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// storeBlocks lists the block ids in the store, sorted.
func storeBlocks(t *testing.T, h *fstest.Harness) []uint64 {
	t.Helper()
	var ids []uint64
	if err := h.Store.List(context.Background(), func(id uint64) error {
		ids = append(ids, id)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(ids)
	return ids
}

// liveBlocks walks the mounted tree and collects the block ids of every
// regular file's block map, sorted: what live files reference.
func liveBlocks(t *testing.T, h *fstest.Harness) []uint64 {
	t.Helper()
	seen := map[uint64]bool{}
	var ids []uint64
	err := filepath.WalkDir(h.Mountpoint, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		ino := info.Sys().(*syscall.Stat_t).Ino
		if seen[ino] {
			return nil // a hard link of a file already counted
		}
		seen[ino] = true
		bm, err := h.Meta.Blocks(context.Background(), meta.Ino(ino))
		if err != nil {
			return err
		}
		for _, ref := range bm {
			ids = append(ids, uint64(ref.ID))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(ids)
	return ids
}

func newCollector(t *testing.T, h *fstest.Harness) *gc.Collector {
	t.Helper()
	c, err := gc.New(gc.Config{}, h.Meta, h.Store, h.Cache, h.FS)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestStoreHoldsExactlyLiveBlocks writes, overwrites, truncates and deletes
// files (one of them while open), leaks a block the way a crash between
// store write and commit does, runs a GC pass, and checks that the store
// holds exactly the blocks that live files reference, and that every live
// file still reads back right after a restart (cold caches).
func TestStoreHoldsExactlyLiveBlocks(t *testing.T) {
	h := fstest.Start(t, fstest.WithBlockSize(blockSize), fstest.WithPageSize(16<<10))
	ctx := context.Background()
	want := map[string][]byte{}
	write := func(name string, data []byte) {
		t.Helper()
		if err := os.WriteFile(h.Path(name), data, 0o644); err != nil {
			t.Fatal(err)
		}
		want[name] = data
	}

	write("kept", randBytes(t, 3*blockSize+100))
	write("overwritten", randBytes(t, 4*blockSize))
	write("truncated", randBytes(t, 5*blockSize))
	write("deleted", randBytes(t, 2*blockSize))
	write("linked", randBytes(t, blockSize+7))
	if err := os.Link(h.Path("linked"), h.Path("link2")); err != nil {
		t.Fatal(err)
	}
	want["link2"] = want["linked"]

	// Overwrite the middle of a file in place: its block 1 is replaced.
	f, err := os.OpenFile(h.Path("overwritten"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	patch := randBytes(t, 1000)
	if _, err := f.WriteAt(patch, blockSize+10); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	copy(want["overwritten"][blockSize+10:], patch)

	// Truncate down into the middle of block 1: blocks 2-4 become garbage.
	if err := os.Truncate(h.Path("truncated"), blockSize+50); err != nil {
		t.Fatal(err)
	}
	want["truncated"] = want["truncated"][:blockSize+50]

	// Unlink a file while it is open; its blocks must survive until close.
	held, err := os.Open(h.Path("deleted"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(h.Path("deleted")); err != nil {
		t.Fatal(err)
	}
	c := newCollector(t, h)
	if _, err := c.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 2*blockSize)
	if _, err := held.ReadAt(got, 0); err != nil {
		t.Fatalf("read unlinked open file after GC: %v", err)
	}
	if !bytes.Equal(got, want["deleted"]) {
		t.Fatal("unlinked open file changed after GC")
	}
	if err := held.Close(); err != nil {
		t.Fatal(err)
	}
	delete(want, "deleted")
	// The kernel sends RELEASE after close(2) returns; the purge that
	// moves the orphan's blocks to the garbage list follows it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		orphans, err := h.Meta.Orphans(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(orphans) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}

	// A block written to the store whose commit never happened (a crash
	// between the two steps of a flush).
	leaked, err := h.Meta.AllocBlocks(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Store.Put(ctx, uint64(leaked), randBytes(t, 4096)); err != nil {
		t.Fatal(err)
	}

	if _, err := c.Sweep(ctx); err != nil {
		t.Fatal(err)
	}
	garbage, err := h.Meta.Garbage(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(garbage) != 0 {
		t.Errorf("garbage list after GC: %v, want empty", garbage)
	}
	inStore, live := storeBlocks(t, h), liveBlocks(t, h)
	if !slices.Equal(inStore, live) {
		t.Fatalf("store holds blocks %v, live files reference %v", inStore, live)
	}
	if slices.Contains(inStore, uint64(leaked)) {
		t.Fatalf("leaked block %d survived the sweep", leaked)
	}
	// kept 4 + overwritten 4 + truncated 2 + linked 2 (shared by link2).
	if len(live) != 12 {
		t.Errorf("live files reference %d blocks, want 12", len(live))
	}

	h.Restart()
	for name, data := range want {
		got, err := os.ReadFile(h.Path(name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, data) {
			t.Errorf("%s: content differs after GC and restart", name)
		}
	}
}

// pins is a fixed answer for the unit test of the deferral rule.
type pins struct {
	oldest   uint64
	open     bool
	inFlight []meta.BlockID
}

func (p pins) OldestOpenIndex() (uint64, bool) { return p.oldest, p.open }
func (p pins) InFlightBlocks(fn func(meta.BlockID)) {
	for _, id := range p.inFlight {
		fn(id)
	}
}

// TestCollectDefersPinnedGarbage checks, on a real metadata service and
// store, that garbage freed after the oldest open file loaded its block
// map is kept, and deleted once nothing pins it, and that a sweep never
// deletes an in-flight block.
func TestCollectDefersPinnedGarbage(t *testing.T) {
	h := fstest.Start(t, fstest.WithBlockSize(blockSize), fstest.WithPageSize(16<<10))
	ctx := context.Background()
	if err := os.WriteFile(h.Path("f"), randBytes(t, blockSize), 0o644); err != nil {
		t.Fatal(err)
	}
	before := h.Meta.AppliedIndex()
	if err := os.WriteFile(h.Path("f"), randBytes(t, blockSize), 0o644); err != nil {
		t.Fatal(err)
	}
	garbage, err := h.Meta.Garbage(ctx, 0)
	if err != nil || len(garbage) == 0 {
		t.Fatalf("garbage after overwrite: %v, %v", garbage, err)
	}
	inFlight, err := h.Meta.AllocBlocks(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Store.Put(ctx, uint64(inFlight), []byte("in flight")); err != nil {
		t.Fatal(err)
	}

	pinned := pins{oldest: before, open: true, inFlight: []meta.BlockID{inFlight}}
	c, err := gc.New(gc.Config{}, h.Meta, h.Store, nil, pinned)
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Deleted != 0 || st.Deferred != len(garbage) {
		t.Fatalf("pinned pass: %+v, want 0 deleted and %d deferred", st, len(garbage))
	}
	if _, err := h.Store.ReadAt(ctx, uint64(inFlight), 0, make([]byte, 9)); err != nil {
		t.Fatalf("in-flight block deleted by the sweep: %v", err)
	}

	c, err = gc.New(gc.Config{}, h.Meta, h.Store, nil, pins{})
	if err != nil {
		t.Fatal(err)
	}
	st, err = c.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The garbage plus the no longer in-flight, never committed block.
	if st.Deleted != len(garbage)+1 {
		t.Fatalf("unpinned pass deleted %d blocks, want %d", st.Deleted, len(garbage)+1)
	}
}
