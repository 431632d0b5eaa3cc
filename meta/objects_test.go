package meta

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// commitBlocks gives file ino size bytes of fresh blocks (block size 4096)
// and returns its map.
func commitBlocks(t *testing.T, s *Service, ino Ino, size uint64) BlockMap {
	t.Helper()
	ctx := context.Background()
	n := blocksFor(size, 4096)
	bm := BlockMap{}
	if n > 0 {
		first, err := s.AllocBlocks(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			bm[i] = BlockRef{ID: first + BlockID(i), Len: uint32(min(4096, size-i*4096))}
		}
	}
	if _, err := s.CommitWrite(ctx, WriteCommit{Ino: ino, Blocks: bm, Size: size, Now: 5}); err != nil {
		t.Fatal(err)
	}
	return bm
}

func TestPutObjectErrors(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	d := mk(t, s, RootIno, "d", modeDir)
	f := mk(t, s, RootIno, "f", modeFile)
	sub := mk(t, s, d.Ino, "sub", modeDir)
	mk(t, s, d.Ino, "taken", modeFile)
	gone := mk(t, s, RootIno, "gone", modeDir)
	if _, err := s.Rmdir(ctx, RootIno, "gone", 1); err != nil {
		t.Fatal(err)
	}
	dirPart := mk(t, s, RootIno, "dirpart", modeDir)
	p1 := mk(t, s, RootIno, "p1", modeFile)
	commitBlocks(t, s, p1.Ino, 5000) // not block aligned
	p1 = attr(t, s, p1.Ino)
	p2 := mk(t, s, RootIno, "p2", modeFile)
	commitBlocks(t, s, p2.Ino, 8192)
	p2 = attr(t, s, p2.Ino)

	ok := func(r *PutObjectRequest) { r.Parent, r.Name = d.Ino, "obj" }
	for _, tc := range []struct {
		name string
		edit func(*PutObjectRequest)
		want syscall.Errno
	}{
		{"parent missing", func(r *PutObjectRequest) { r.Parent = 999 }, syscall.ENOENT},
		{"parent removed", func(r *PutObjectRequest) { r.Parent = gone.Ino }, syscall.ENOENT},
		{"parent is a file", func(r *PutObjectRequest) { r.Parent = f.Ino }, syscall.ENOTDIR},
		{"name is a directory", func(r *PutObjectRequest) { r.Name = "sub" }, syscall.EISDIR},
		{"no replace", func(r *PutObjectRequest) { r.Name, r.NoReplace = "taken", true }, syscall.EEXIST},
		{"empty name", func(r *PutObjectRequest) { r.Name = "" }, syscall.EINVAL},
		{"slash in name", func(r *PutObjectRequest) { r.Name = "a/b" }, syscall.EINVAL},
		{"name too long", func(r *PutObjectRequest) { r.Name = strings.Repeat("x", MaxNameLen+1) }, syscall.ENAMETOOLONG},
		{"directory mode", func(r *PutObjectRequest) { r.Mode = modeDir }, syscall.EINVAL},
		{"wrong block size", func(r *PutObjectRequest) { r.BlockSize = 8192 }, syscall.EINVAL},
		{"block past size", func(r *PutObjectRequest) { r.Size, r.Blocks = 4096, map[uint64]BlockRef{1: {ID: 1, Len: 1}} }, syscall.EINVAL},
		{"block too long", func(r *PutObjectRequest) { r.Size, r.Blocks = 4096, map[uint64]BlockRef{0: {ID: 1, Len: 4097}} }, syscall.EINVAL},
		{"xattr too large", func(r *PutObjectRequest) { r.Xattrs = map[string][]byte{"user.a": make([]byte, MaxXattrSize+1)} }, syscall.E2BIG},
		{"xattr name too long", func(r *PutObjectRequest) { r.Xattrs = map[string][]byte{strings.Repeat("x", MaxNameLen+1): nil} }, syscall.ERANGE},
		{"parts and blocks", func(r *PutObjectRequest) {
			r.Size, r.Blocks, r.Parts = 8192, map[uint64]BlockRef{0: {ID: 1, Len: 1}}, []ObjectPart{{p2.Ino, p2.Version}}
		}, syscall.EINVAL},
		{"unaligned part", func(r *PutObjectRequest) {
			r.Size, r.Parts = 5000+8192, []ObjectPart{{p1.Ino, p1.Version}, {p2.Ino, p2.Version}}
		}, syscall.EINVAL},
		{"part twice", func(r *PutObjectRequest) {
			r.Size, r.Parts = 2*8192, []ObjectPart{{p2.Ino, p2.Version}, {p2.Ino, p2.Version}}
		}, syscall.EINVAL},
		{"part changed", func(r *PutObjectRequest) { r.Size, r.Parts = 8192, []ObjectPart{{p2.Ino, p2.Version + 1}} }, syscall.ESTALE},
		{"part is a directory", func(r *PutObjectRequest) { r.Parts = []ObjectPart{{dirPart.Ino, dirPart.Version}} }, syscall.EISDIR},
		{"part missing", func(r *PutObjectRequest) { r.Parts = []ObjectPart{{999, 1}} }, syscall.ENOENT},
		{"size not the parts' sum", func(r *PutObjectRequest) { r.Size, r.Parts = 100, []ObjectPart{{p2.Ino, p2.Version}} }, syscall.EINVAL},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r PutObjectRequest
			ok(&r)
			tc.edit(&r)
			_, err := s.PutObject(ctx, r)
			wantErrno(t, "PutObject", err, tc.want)
			// A failed command changes nothing.
			if _, err := s.Lookup(ctx, d.Ino, "obj"); err == nil {
				t.Fatal("a failed PutObject linked the object")
			}
			if a := attr(t, s, p2.Ino); a.Size != 8192 || a.Version != p2.Version {
				t.Fatalf("a failed PutObject changed a part: %+v", a)
			}
			if a := attr(t, s, sub.Ino); !a.IsDir() || a.Nlink != 2 {
				t.Fatalf("a failed PutObject changed a directory: %+v", a)
			}
		})
	}
}

func TestPutObject(t *testing.T) {
	var mu sync.Mutex
	var changes []Change
	cfg := testConfig(t.TempDir())
	cfg.OnChange = func(_ string, ch []Change) {
		mu.Lock()
		changes = append(changes, ch...)
		mu.Unlock()
	}
	s := openTestConfig(t, cfg)
	ctx := context.Background()
	d := mk(t, s, RootIno, "d", modeDir)
	ids, err := s.AllocBlocks(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	stats0, _ := s.StatFS(ctx)

	// A new object: blocks, size, mtime, xattrs, owner in one command.
	bm := BlockMap{0: {ids, 4096}, 1: {ids + 1, 4096}, 2: {ids + 2, 100}}
	idx0 := s.AppliedIndex()
	res, err := s.PutObject(ctx, PutObjectRequest{Parent: d.Ino, Name: "obj", Mode: 0o640, Uid: 7, Gid: 8,
		Blocks: bm, Size: 8292, Mtime: 42, Now: 50, BlockSize: 4096,
		Xattrs: map[string][]byte{"user.s3": []byte("meta"), "user.empty": nil}})
	if err != nil {
		t.Fatal(err)
	}
	if s.AppliedIndex() != idx0+1 {
		t.Fatalf("PutObject took %d commands, want 1", s.AppliedIndex()-idx0)
	}
	a := res.Attr
	if res.Replaced != 0 || a.Mode != syscall.S_IFREG|0o640 || a.Uid != 7 || a.Gid != 8 || a.Size != 8292 ||
		a.Mtime != 42 || a.Ctime != 50 || a.Nlink != 1 || a.Version != InitialVersion {
		t.Fatalf("PutObject = %+v", res)
	}
	if got, err := s.Lookup(ctx, d.Ino, "obj"); err != nil || got != a {
		t.Fatalf("Lookup = %+v, %v; want %+v", got, err, a)
	}
	if got, _ := s.Blocks(ctx, a.Ino); !maps.Equal(got, bm) {
		t.Fatalf("Blocks = %v, want %v", got, bm)
	}
	if v, err := s.GetXattr(ctx, a.Ino, "user.s3"); err != nil || string(v) != "meta" {
		t.Fatalf("GetXattr = %q, %v", v, err)
	}
	if v, err := s.GetXattr(ctx, a.Ino, "user.empty"); err != nil || len(v) != 0 {
		t.Fatalf("GetXattr(empty) = %q, %v", v, err)
	}
	if st, _ := s.StatFS(ctx); st.Inodes != stats0.Inodes+1 || st.UsedBytes != stats0.UsedBytes+8292 {
		t.Fatalf("StatFS = %+v, was %+v", st, stats0)
	}

	// Replacing it: the old inode becomes an orphan, its blocks stay
	// referenced until its purge.
	mu.Lock()
	changes = nil
	mu.Unlock()
	res2, err := s.PutObject(ctx, PutObjectRequest{Parent: d.Ino, Name: "obj", Mode: 0o644, Size: 0, Now: 60})
	if err != nil {
		t.Fatal(err)
	}
	if res2.Replaced != a.Ino || res2.ReplacedAttr.Nlink != 0 || res2.Attr.Ino == a.Ino || res2.Attr.Mtime != 60 {
		t.Fatalf("replace = %+v", res2)
	}
	if orph, _ := s.Orphans(ctx); !slices.Contains(orph, a.Ino) {
		t.Fatalf("Orphans = %v, want %d", orph, a.Ino)
	}
	if g, _ := s.Garbage(ctx, 0); len(g) != 0 {
		t.Fatalf("garbage before the purge: %v", g)
	}
	mu.Lock()
	got := slices.Clone(changes)
	mu.Unlock()
	for _, want := range []Change{
		{Kind: ChangeEntry, Parent: d.Ino, Name: "obj", Ino: res2.Attr.Ino},
		{Kind: ChangeInode, Ino: a.Ino},
		{Kind: ChangeInode, Ino: d.Ino},
	} {
		if !slices.Contains(got, want) {
			t.Errorf("changes %+v lack %+v", got, want)
		}
	}
	if err := s.Purge(ctx, a.Ino); err != nil {
		t.Fatal(err)
	}
	if g, _ := s.Garbage(ctx, 0); len(g) != 3 {
		t.Fatalf("garbage after the purge: %v, want the 3 blocks", g)
	}

	// A file with two links loses one and is no orphan.
	h := mk(t, s, RootIno, "h", modeFile)
	if _, err := s.Link(ctx, h.Ino, d.Ino, "hl", 1); err != nil {
		t.Fatal(err)
	}
	res3, err := s.PutObject(ctx, PutObjectRequest{Parent: d.Ino, Name: "hl", Now: 70})
	if err != nil || res3.Replaced != h.Ino || res3.ReplacedAttr.Nlink != 1 {
		t.Fatalf("replace a hard link = %+v, %v", res3, err)
	}
}

func TestPutObjectParts(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	up := mk(t, s, RootIno, "up", modeDir)
	sizes := []uint64{8192, 4096, 3000} // aligned, aligned, the last any size
	var parts []ObjectPart
	var want []BlockRef
	var total uint64
	for i, n := range sizes {
		p := mk(t, s, up.Ino, string(rune('a'+i)), modeFile)
		bm := commitBlocks(t, s, p.Ino, n)
		for j := range uint64(len(bm)) {
			want = append(want, bm[j])
		}
		p = attr(t, s, p.Ino)
		parts = append(parts, ObjectPart{Ino: p.Ino, Version: p.Version})
		total += n
	}
	stats0, _ := s.StatFS(ctx)
	res, err := s.PutObject(ctx, PutObjectRequest{Parent: RootIno, Name: "whole", Parts: parts, Size: total, Now: 9})
	if err != nil {
		t.Fatal(err)
	}
	if res.Attr.Size != total {
		t.Fatalf("size %d, want %d", res.Attr.Size, total)
	}
	bm, _ := s.Blocks(ctx, res.Attr.Ino)
	if len(bm) != len(want) {
		t.Fatalf("moved map %v, want %v", bm, want)
	}
	for i, ref := range want {
		if bm[uint64(i)] != ref {
			t.Fatalf("block %d = %v, want %v", i, bm[uint64(i)], ref)
		}
	}
	for _, p := range parts {
		a := attr(t, s, p.Ino)
		pbm, _ := s.Blocks(ctx, p.Ino)
		if a.Size != 0 || a.Version != p.Version+1 || len(pbm) != 0 {
			t.Fatalf("part %d after the move: %+v, %v", p.Ino, a, pbm)
		}
	}
	if st, _ := s.StatFS(ctx); st.UsedBytes != stats0.UsedBytes || st.Inodes != stats0.Inodes+1 {
		t.Fatalf("StatFS %+v, was %+v: moving must not count bytes twice", st, stats0)
	}
	// Deleting the emptied parts frees nothing; every moved block stays
	// referenced.
	for i := range sizes {
		name := string(rune('a' + i))
		a, err := s.Unlink(ctx, up.Ino, name, 10)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Purge(ctx, a.Ino); err != nil {
			t.Fatal(err)
		}
	}
	if g, _ := s.Garbage(ctx, 0); len(g) != 0 {
		t.Fatalf("moved blocks became garbage: %v", g)
	}
	refs := map[BlockID]bool{}
	if err := s.ReferencedBlocks(ctx, func(id BlockID) error { refs[id] = true; return nil }); err != nil {
		t.Fatal(err)
	}
	for _, ref := range want {
		if !refs[ref.ID] {
			t.Fatalf("block %d is not referenced after the move", ref.ID)
		}
	}
	// A retried command (same parts, now changed) fails: nothing moves twice.
	_, err = s.PutObject(ctx, PutObjectRequest{Parent: RootIno, Name: "again", Parts: parts, Size: total, Now: 11})
	wantErrno(t, "PutObject with moved parts", err, syscall.ENOENT)
}
