package meta

import (
	"context"
	"maps"
	"slices"
	"syscall"
	"testing"
)

func TestBlockMaps(t *testing.T) {
	s := openTest(t, t.TempDir()) // block size 4096
	ctx := context.Background()
	f := mk(t, s, RootIno, "f", modeFile)
	d := mk(t, s, RootIno, "d", modeDir)

	first, err := s.AllocBlocks(ctx, 10)
	if err != nil || first != 1 {
		t.Fatalf("AllocBlocks = %d, %v; ids start at 1", first, err)
	}
	if next, _ := s.NextBlockID(ctx); next != 11 {
		t.Fatalf("NextBlockID = %d", next)
	}
	if second, _ := s.AllocBlocks(ctx, 1); second != 11 {
		t.Fatalf("second range starts at %d", second)
	}
	_, err = s.AllocBlocks(ctx, 0)
	wantErrno(t, "AllocBlocks(0)", err, syscall.EINVAL)

	// Write three blocks, 10000 bytes.
	a, err := s.CommitWrite(ctx, WriteCommit{Ino: f.Ino, Size: 10000, Mtime: 7, Now: 8, BlockSize: 4096,
		Blocks: map[uint64]BlockRef{0: {1, 4096}, 1: {2, 4096}, 2: {3, 1808}}})
	if err != nil || a.Size != 10000 || a.Mtime != 7 || a.Ctime != 8 || a.Version != f.Version+1 {
		t.Fatalf("CommitWrite = %+v, %v", a, err)
	}
	// Rewrite block 1 with a new id and the same block 0: only 2 is garbage.
	if _, err := s.CommitWrite(ctx, WriteCommit{Ino: f.Ino, Size: 10000, Now: 9,
		Blocks: map[uint64]BlockRef{0: {1, 4096}, 1: {4, 4096}}}); err != nil {
		t.Fatal(err)
	}
	idx := s.AppliedIndex()
	g, _ := s.Garbage(ctx, 0)
	if len(g) != 1 || g[0].ID != 2 || g[0].FreedAt != idx {
		t.Fatalf("Garbage = %+v, want block 2 freed at %d", g, idx)
	}
	// Truncate to 5000: block 2 (id 3) dropped, block 1 shortened to 904.
	a, err = s.SetAttr(ctx, f.Ino, SetAttrRequest{Valid: SetSize, Size: 5000, Now: 10})
	if err != nil || a.Size != 5000 || a.Mtime != 10 {
		t.Fatalf("truncate: %+v, %v", a, err)
	}
	bm, _ := s.Blocks(ctx, f.Ino)
	if want := (BlockMap{0: {1, 4096}, 1: {4, 904}}); !maps.Equal(bm, want) {
		t.Fatalf("after truncate %v, want %v", bm, want)
	}
	// Growing leaves a hole and keeps the short boundary block.
	if _, err := s.SetAttr(ctx, f.Ino, SetAttrRequest{Valid: SetSize, Size: 1 << 20, Now: 11}); err != nil {
		t.Fatal(err)
	}
	if bm2, _ := s.Blocks(ctx, f.Ino); !maps.Equal(bm, bm2) {
		t.Fatalf("grow changed the map: %v", bm2)
	}
	// A commit that punches a hole and shrinks: entry 0 removed (ID 0),
	// size 4096 drops entry 1 too.
	if _, err := s.CommitWrite(ctx, WriteCommit{Ino: f.Ino, Size: 4096, Now: 12,
		Blocks: map[uint64]BlockRef{0: {0, 0}, 5: {5, 100}}}); err != nil {
		t.Fatal(err)
	}
	if bm, _ := s.Blocks(ctx, f.Ino); len(bm) != 0 {
		t.Fatalf("map after hole commit %v", bm)
	}
	ids := func(g []Garbage) []BlockID {
		var out []BlockID
		for _, x := range g {
			out = append(out, x.ID)
		}
		slices.Sort(out)
		return out
	}
	g, _ = s.Garbage(ctx, 0)
	if got := ids(g); !slices.Equal(got, []BlockID{1, 2, 3, 4, 5}) {
		t.Fatalf("garbage ids %v", got)
	}
	for i := 1; i < len(g); i++ {
		if g[i].FreedAt < g[i-1].FreedAt {
			t.Fatalf("garbage not oldest first: %+v", g)
		}
	}
	if g1, _ := s.Garbage(ctx, 2); len(g1) != 2 || g1[0] != g[0] {
		t.Fatalf("Garbage(2) = %+v", g1)
	}
	if err := s.ForgetGarbage(ctx, []BlockID{1, 2, 99}); err != nil {
		t.Fatal(err)
	}
	if g, _ = s.Garbage(ctx, 0); !slices.Equal(ids(g), []BlockID{3, 4, 5}) {
		t.Fatalf("after forget %v", ids(g))
	}

	// Files past 4 GiB: block indexes beyond 2^32 / block size, sparse.
	big := mk(t, s, RootIno, "big", modeFile)
	far := uint64(5<<30) / 4096 // block index at 5 GiB
	huge := uint64(1) << 40 / 4096
	if _, err := s.CommitWrite(ctx, WriteCommit{Ino: big.Ino, Size: (huge + 1) * 4096, Now: 13,
		Blocks: map[uint64]BlockRef{far: {20, 4096}, huge: {21, 4096}, 0: {22, 1}}}); err != nil {
		t.Fatal(err)
	}
	bm, _ = s.Blocks(ctx, big.Ino)
	if want := (BlockMap{0: {22, 1}, far: {20, 4096}, huge: {21, 4096}}); !maps.Equal(bm, want) {
		t.Fatalf("big map %v", bm)
	}
	if _, err := s.SetAttr(ctx, big.Ino, SetAttrRequest{Valid: SetSize, Size: far*4096 + 10, Now: 14}); err != nil {
		t.Fatal(err)
	}
	bm, _ = s.Blocks(ctx, big.Ino)
	if want := (BlockMap{0: {22, 1}, far: {20, 10}}); !maps.Equal(bm, want) {
		t.Fatalf("big map after truncate %v", bm)
	}
	if st, _ := s.StatFS(ctx); st.UsedBytes != 4096+far*4096+10 {
		t.Fatalf("UsedBytes %d", st.UsedBytes)
	}

	var refs []BlockID
	if err := s.ReferencedBlocks(ctx, func(id BlockID) error { refs = append(refs, id); return nil }); err != nil {
		t.Fatal(err)
	}
	slices.Sort(refs)
	if want := []BlockID{3, 4, 5, 20, 21, 22}; !slices.Equal(refs, want) {
		t.Fatalf("ReferencedBlocks = %v, want %v", refs, want)
	}

	errs := []struct {
		name string
		c    WriteCommit
		want syscall.Errno
	}{
		{"dir", WriteCommit{Ino: d.Ino}, syscall.EISDIR},
		{"missing", WriteCommit{Ino: 9999}, syscall.ENOENT},
		{"block size mismatch", WriteCommit{Ino: f.Ino, BlockSize: 512}, syscall.EINVAL},
		{"len past block", WriteCommit{Ino: f.Ino, Size: 1, Blocks: map[uint64]BlockRef{0: {30, 4097}}}, syscall.EINVAL},
	}
	for _, e := range errs {
		_, err := s.CommitWrite(ctx, e.c)
		wantErrno(t, "CommitWrite "+e.name, err, e.want)
	}
	_, err = s.Blocks(ctx, 9999)
	wantErrno(t, "Blocks missing", err, syscall.ENOENT)
}

func TestStatFS(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	st, err := s.StatFS(ctx)
	if err != nil || st.Inodes != 1 || st.UsedBytes != 0 {
		t.Fatalf("fresh StatFS = %+v, %v", st, err)
	}
	f := mk(t, s, RootIno, "f", modeFile)
	mk(t, s, RootIno, "d", modeDir)
	if _, err := s.SetAttr(ctx, f.Ino, SetAttrRequest{Valid: SetSize, Size: 12345}); err != nil {
		t.Fatal(err)
	}
	if st, _ = s.StatFS(ctx); st.Inodes != 3 || st.UsedBytes != 12345 {
		t.Fatalf("StatFS = %+v", st)
	}
}
