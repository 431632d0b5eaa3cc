package meta

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"syscall"
	"testing"
)

func TestCreateLookup(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	file := mk(t, s, RootIno, "file", modeFile)
	dir := mk(t, s, RootIno, "dir", modeDir)

	tests := []struct {
		name string
		req  CreateRequest
		want syscall.Errno
	}{
		{"regular", CreateRequest{Parent: RootIno, Name: "a", Mode: modeFile}, 0},
		{"no type bits is regular", CreateRequest{Parent: RootIno, Name: "plain", Mode: 0o600}, 0},
		{"fifo", CreateRequest{Parent: RootIno, Name: "fifo", Mode: syscall.S_IFIFO | 0o644}, 0},
		{"socket", CreateRequest{Parent: RootIno, Name: "sock", Mode: syscall.S_IFSOCK | 0o644}, 0},
		{"chardev", CreateRequest{Parent: RootIno, Name: "chr", Mode: syscall.S_IFCHR | 0o644, Rdev: 0x0103}, 0},
		{"blockdev", CreateRequest{Parent: RootIno, Name: "blk", Mode: syscall.S_IFBLK | 0o644, Rdev: 0x0801}, 0},
		{"dir in dir", CreateRequest{Parent: dir.Ino, Name: "sub", Mode: modeDir}, 0},
		{"symlink", CreateRequest{Parent: RootIno, Name: "ln", Mode: syscall.S_IFLNK | 0o777, Target: "file"}, 0},
		{"max name", CreateRequest{Parent: RootIno, Name: strings.Repeat("n", MaxNameLen), Mode: modeFile}, 0},
		{"exists", CreateRequest{Parent: RootIno, Name: "file", Mode: modeFile}, syscall.EEXIST},
		{"dot", CreateRequest{Parent: RootIno, Name: ".", Mode: modeFile}, syscall.EEXIST},
		{"dotdot", CreateRequest{Parent: RootIno, Name: "..", Mode: modeDir}, syscall.EEXIST},
		{"empty name", CreateRequest{Parent: RootIno, Name: "", Mode: modeFile}, syscall.EINVAL},
		{"slash", CreateRequest{Parent: RootIno, Name: "a/b", Mode: modeFile}, syscall.EINVAL},
		{"too long", CreateRequest{Parent: RootIno, Name: strings.Repeat("n", MaxNameLen+1), Mode: modeFile}, syscall.ENAMETOOLONG},
		{"parent is file", CreateRequest{Parent: file.Ino, Name: "x", Mode: modeFile}, syscall.ENOTDIR},
		{"parent missing", CreateRequest{Parent: 9999, Name: "x", Mode: modeFile}, syscall.ENOENT},
		{"empty symlink", CreateRequest{Parent: RootIno, Name: "ln0", Mode: syscall.S_IFLNK | 0o777}, syscall.ENOENT},
		{"long symlink", CreateRequest{Parent: RootIno, Name: "ln1", Mode: syscall.S_IFLNK | 0o777, Target: strings.Repeat("t", MaxSymlinkLen+1)}, syscall.ENAMETOOLONG},
		{"bad type", CreateRequest{Parent: RootIno, Name: "bad", Mode: 0o170000}, syscall.EINVAL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.req.Now, tt.req.Uid, tt.req.Gid = 777, 10, 20
			a, err := s.Create(ctx, tt.req)
			wantErrno(t, "Create", err, tt.want)
			if tt.want != 0 {
				return
			}
			if a.Uid != 10 || a.Gid != 20 || a.Mtime != 777 || a.Ctime != 777 || a.Atime != 777 {
				t.Errorf("attr %+v: ownership or times not set", a)
			}
			if a.Mode&syscall.S_IFMT == 0 {
				t.Errorf("mode %o has no type", a.Mode)
			}
			got, err := s.Lookup(ctx, tt.req.Parent, tt.req.Name)
			if err != nil || got != a {
				t.Fatalf("Lookup = %+v, %v; want %+v", got, err, a)
			}
			switch {
			case a.IsDir():
				if a.Nlink != 2 || a.Parent != tt.req.Parent {
					t.Errorf("dir nlink %d parent %d", a.Nlink, a.Parent)
				}
			case a.IsSymlink():
				target, err := s.Readlink(ctx, a.Ino)
				if err != nil || target != tt.req.Target || a.Size != uint64(len(target)) {
					t.Errorf("Readlink = %q, %v (size %d)", target, err, a.Size)
				}
			default:
				if a.Nlink != 1 || a.Rdev != tt.req.Rdev {
					t.Errorf("nlink %d rdev %x", a.Nlink, a.Rdev)
				}
			}
		})
	}

	if r := attr(t, s, RootIno); r.Nlink != 3 || r.Mtime != 777 {
		t.Errorf("root nlink %d mtime %d; want 3 (two subdirs), 777", r.Nlink, r.Mtime)
	}
	if d := attr(t, s, dir.Ino); d.Nlink != 3 {
		t.Errorf("dir nlink %d, want 3", d.Nlink)
	}
	lookups := []struct {
		parent Ino
		name   string
		want   syscall.Errno
	}{
		{RootIno, "missing", syscall.ENOENT},
		{file.Ino, "x", syscall.ENOTDIR},
		{9999, "x", syscall.ENOENT},
		{RootIno, strings.Repeat("n", MaxNameLen+1), syscall.ENAMETOOLONG},
	}
	for _, l := range lookups {
		_, err := s.Lookup(ctx, l.parent, l.name)
		wantErrno(t, "Lookup "+l.name, err, l.want)
	}
	_, err := s.Readlink(ctx, file.Ino)
	wantErrno(t, "Readlink of a file", err, syscall.EINVAL)
	_, err = s.GetAttr(ctx, 9999)
	wantErrno(t, "GetAttr missing", err, syscall.ENOENT)
}

func TestReadDir(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	d := mk(t, s, RootIno, "d", modeDir)
	names := []string{"c", "a", "b", "aa", "z", "dir"}
	for _, n := range names {
		mode := uint32(modeFile)
		if n == "dir" {
			mode = modeDir
		}
		mk(t, s, d.Ino, n, mode)
	}
	slices.Sort(names)
	all, err := s.ReadDir(ctx, d.Ino, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range all {
		got = append(got, e.Name)
		if e.Name == "dir" && e.Mode != syscall.S_IFDIR || e.Name != "dir" && e.Mode != syscall.S_IFREG {
			t.Errorf("%s: mode %o", e.Name, e.Mode)
		}
	}
	if !slices.Equal(got, names) {
		t.Fatalf("ReadDir = %v, want %v", got, names)
	}
	// Paging: two at a time, resuming after the last name.
	var paged []string
	after := ""
	for {
		page, err := s.ReadDir(ctx, d.Ino, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		if len(page) > 2 {
			t.Fatalf("page of %d", len(page))
		}
		for _, e := range page {
			paged = append(paged, e.Name)
		}
		after = page[len(page)-1].Name
	}
	if !slices.Equal(paged, names) {
		t.Fatalf("paged ReadDir = %v, want %v", paged, names)
	}
	// Prefix scan must not leak into a directory whose ino shares a prefix.
	empty := mk(t, s, RootIno, "empty", modeDir)
	if es, err := s.ReadDir(ctx, empty.Ino, "", 0); err != nil || len(es) != 0 {
		t.Fatalf("empty dir: %v, %v", es, err)
	}
	f, _ := s.Lookup(ctx, d.Ino, "a")
	_, err = s.ReadDir(ctx, f.Ino, "", 0)
	wantErrno(t, "ReadDir file", err, syscall.ENOTDIR)
	_, err = s.ReadDir(ctx, 9999, "", 0)
	wantErrno(t, "ReadDir missing", err, syscall.ENOENT)
}

func TestLinkUnlinkRmdir(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	f := mk(t, s, RootIno, "f", modeFile)
	d := mk(t, s, RootIno, "d", modeDir)
	mk(t, s, d.Ino, "inner", modeFile)
	e := mk(t, s, RootIno, "e", modeDir)

	a, err := s.Link(ctx, f.Ino, d.Ino, "f2", 200)
	if err != nil || a.Nlink != 2 || a.Ctime != 200 {
		t.Fatalf("Link = %+v, %v", a, err)
	}
	if p := attr(t, s, d.Ino); p.Mtime != 200 || p.Ctime != 200 {
		t.Errorf("link did not touch parent: %+v", p)
	}
	links := []struct {
		name     string
		ino, dir Ino
		newName  string
		want     syscall.Errno
	}{
		{"to dir", d.Ino, RootIno, "dl", syscall.EPERM},
		{"exists", f.Ino, RootIno, "d", syscall.EEXIST},
		{"missing ino", 9999, RootIno, "x", syscall.ENOENT},
		{"parent not dir", f.Ino, f.Ino, "x", syscall.ENOTDIR},
		{"bad name", f.Ino, RootIno, "a/b", syscall.EINVAL},
		{"long name", f.Ino, RootIno, strings.Repeat("x", 256), syscall.ENAMETOOLONG},
	}
	for _, l := range links {
		_, err := s.Link(ctx, l.ino, l.dir, l.newName, 1)
		wantErrno(t, "Link "+l.name, err, l.want)
	}

	unlinks := []struct {
		name   string
		parent Ino
		child  string
		want   syscall.Errno
	}{
		{"dir", RootIno, "d", syscall.EISDIR},
		{"missing", RootIno, "nope", syscall.ENOENT},
		{"parent not dir", f.Ino, "x", syscall.ENOTDIR},
	}
	for _, u := range unlinks {
		_, err := s.Unlink(ctx, u.parent, u.child, 1)
		wantErrno(t, "Unlink "+u.name, err, u.want)
	}
	a, err = s.Unlink(ctx, RootIno, "f", 300)
	if err != nil || a.Nlink != 1 || a.Ctime != 300 {
		t.Fatalf("Unlink first link = %+v, %v", a, err)
	}
	if _, err := s.Lookup(ctx, RootIno, "f"); err != syscall.ENOENT {
		t.Fatalf("Lookup after unlink: %v", err)
	}
	if orph, _ := s.Orphans(ctx); len(orph) != 0 {
		t.Fatalf("orphans with a link left: %v", orph)
	}

	rmdirs := []struct {
		name   string
		parent Ino
		child  string
		want   syscall.Errno
	}{
		{"not empty", RootIno, "d", syscall.ENOTEMPTY},
		{"file", d.Ino, "f2", syscall.ENOTDIR},
		{"missing", RootIno, "nope", syscall.ENOENT},
		{"dot", RootIno, ".", syscall.EINVAL},
		{"dotdot", e.Ino, "..", syscall.ENOTEMPTY},
		{"parent not dir", f.Ino, "x", syscall.ENOTDIR},
	}
	for _, r := range rmdirs {
		_, err := s.Rmdir(ctx, r.parent, r.child, 1)
		wantErrno(t, "Rmdir "+r.name, err, r.want)
	}
	before := attr(t, s, RootIno)
	st0, _ := s.StatFS(ctx)
	removed, err := s.Rmdir(ctx, RootIno, "e", 400)
	if err != nil {
		t.Fatal(err)
	}
	if removed.Ino != e.Ino || removed.Nlink != 0 {
		t.Errorf("rmdir returned %+v, want ino %d with nlink 0", removed, e.Ino)
	}
	after := attr(t, s, RootIno)
	if after.Nlink != before.Nlink-1 || after.Mtime != 400 {
		t.Errorf("root after rmdir: nlink %d->%d mtime %d", before.Nlink, after.Nlink, after.Mtime)
	}
	// Until Purge the removed directory is an orphan: readable by ino (an
	// open descriptor can fstat it) and closed to new entries.
	if got := attr(t, s, e.Ino); !got.IsDir() || got.Nlink != 0 {
		t.Errorf("orphaned dir attr %+v, want a directory with nlink 0", got)
	}
	if orphans, err := s.Orphans(ctx); err != nil || !slices.Contains(orphans, e.Ino) {
		t.Errorf("orphans %v (%v), want %d listed", orphans, err, e.Ino)
	}
	_, err = s.Create(ctx, CreateRequest{Parent: e.Ino, Name: "x", Mode: syscall.S_IFREG | 0o644, Now: 401})
	wantErrno(t, "Create in removed dir", err, syscall.ENOENT)
	_, err = s.Link(ctx, f.Ino, e.Ino, "x", 401)
	wantErrno(t, "Link into removed dir", err, syscall.ENOENT)
	_, err = s.Rename(ctx, d.Ino, "f2", e.Ino, "x", 0, 401)
	wantErrno(t, "Rename into removed dir", err, syscall.ENOENT)
	if err := s.Purge(ctx, e.Ino); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GetAttr(ctx, e.Ino); err != syscall.ENOENT {
		t.Errorf("purged dir still there: %v", err)
	}
	if st1, _ := s.StatFS(ctx); st1.Inodes != st0.Inodes-1 {
		t.Errorf("inodes %d -> %d", st0.Inodes, st1.Inodes)
	}
}

func TestOrphanLifecycle(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	f := mk(t, s, RootIno, "f", modeFile)
	first, _ := s.AllocBlocks(ctx, 2)
	if _, err := s.CommitWrite(ctx, WriteCommit{Ino: f.Ino, Size: 5000, Now: 1, Blocks: map[uint64]BlockRef{
		0: {ID: first, Len: 4096}, 1: {ID: first + 1, Len: 904},
	}}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetXattr(ctx, f.Ino, "user.k", []byte("v"), 0, 1); err != nil {
		t.Fatal(err)
	}
	st0, _ := s.StatFS(ctx)
	// Unlink while "open": the inode stays readable by number.
	a, err := s.Unlink(ctx, RootIno, "f", 2)
	if err != nil || a.Nlink != 0 {
		t.Fatalf("Unlink = %+v, %v", a, err)
	}
	if got := attr(t, s, f.Ino); got.Nlink != 0 || got.Size != 5000 {
		t.Fatalf("orphan attr %+v", got)
	}
	if bm, err := s.Blocks(ctx, f.Ino); err != nil || len(bm) != 2 {
		t.Fatalf("orphan blocks %v, %v", bm, err)
	}
	if orph, _ := s.Orphans(ctx); !slices.Equal(orph, []Ino{f.Ino}) {
		t.Fatalf("Orphans = %v", orph)
	}
	_, err = s.Link(ctx, f.Ino, RootIno, "back", 3)
	wantErrno(t, "Link orphan", err, syscall.ENOENT)
	var refs []BlockID
	_ = s.ReferencedBlocks(ctx, func(id BlockID) error { refs = append(refs, id); return nil })
	if !slices.Equal(refs, []BlockID{first, first + 1}) {
		t.Fatalf("orphan's blocks not referenced: %v", refs)
	}
	if err := s.Purge(ctx, f.Ino); err != nil {
		t.Fatal(err)
	}
	_, err = s.GetAttr(ctx, f.Ino)
	wantErrno(t, "GetAttr purged", err, syscall.ENOENT)
	_, err = s.ListXattr(ctx, f.Ino)
	wantErrno(t, "ListXattr purged", err, syscall.ENOENT)
	if orph, _ := s.Orphans(ctx); len(orph) != 0 {
		t.Fatalf("Orphans after purge = %v", orph)
	}
	g, _ := s.Garbage(ctx, 0)
	if len(g) != 2 || g[0].ID != first || g[1].ID != first+1 || g[0].FreedAt == 0 {
		t.Fatalf("Garbage = %+v", g)
	}
	if st1, _ := s.StatFS(ctx); st1.Inodes != st0.Inodes-1 || st1.UsedBytes != st0.UsedBytes-5000 {
		t.Errorf("statfs %+v -> %+v", st0, st1)
	}
	// Purging again, or purging a linked inode, does nothing.
	if err := s.Purge(ctx, f.Ino); err != nil {
		t.Fatal(err)
	}
	linked := mk(t, s, RootIno, "linked", modeFile)
	if err := s.Purge(ctx, linked.Ino); err != nil {
		t.Fatal(err)
	}
	attr(t, s, linked.Ino)
}

func TestSetAttr(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	f := mk(t, s, RootIno, "f", modeFile)
	d := mk(t, s, RootIno, "d", modeDir)
	l, _ := s.Create(ctx, CreateRequest{Parent: RootIno, Name: "l", Mode: syscall.S_IFLNK | 0o777, Target: "f"})

	a, err := s.SetAttr(ctx, f.Ino, SetAttrRequest{
		Valid: SetMode | SetUid | SetGid | SetAtime | SetMtime,
		Mode:  syscall.S_IFDIR | 0o4700, Uid: 5, Gid: 6, Atime: 11, Mtime: 12, Now: 13,
	})
	if err != nil {
		t.Fatal(err)
	}
	want := f
	want.Mode, want.Uid, want.Gid, want.Atime, want.Mtime, want.Ctime = syscall.S_IFREG|0o4700, 5, 6, 11, 12, 13
	if a != want {
		t.Fatalf("SetAttr = %+v, want %+v", a, want)
	}
	a, err = s.SetAttr(ctx, f.Ino, SetAttrRequest{Valid: SetSize, Size: 1 << 40, Now: 20})
	if err != nil || a.Size != 1<<40 || a.Version != f.Version+1 || a.Mtime != 20 || a.Ctime != 20 {
		t.Fatalf("grow: %+v, %v", a, err)
	}
	errs := []struct {
		name string
		ino  Ino
		req  SetAttrRequest
		want syscall.Errno
	}{
		{"size of dir", d.Ino, SetAttrRequest{Valid: SetSize}, syscall.EISDIR},
		{"size of symlink", l.Ino, SetAttrRequest{Valid: SetSize}, syscall.EINVAL},
		{"missing", 9999, SetAttrRequest{Valid: SetMode}, syscall.ENOENT},
	}
	for _, e := range errs {
		_, err := s.SetAttr(ctx, e.ino, e.req)
		wantErrno(t, "SetAttr "+e.name, err, e.want)
	}
}

func TestXattr(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	f := mk(t, s, RootIno, "f", modeFile)
	if err := s.SetXattr(ctx, f.Ino, "user.b", []byte("2"), 0, 50); err != nil {
		t.Fatal(err)
	}
	if err := s.SetXattr(ctx, f.Ino, "user.a", nil, XattrCreate, 51); err != nil {
		t.Fatal(err)
	}
	if a := attr(t, s, f.Ino); a.Ctime != 51 {
		t.Errorf("ctime %d after setxattr", a.Ctime)
	}
	tests := []struct {
		name  string
		ino   Ino
		key   string
		val   []byte
		flags XattrFlags
		want  syscall.Errno
	}{
		{"replace existing", f.Ino, "user.b", []byte("3"), XattrReplace, 0},
		{"create existing", f.Ino, "user.b", nil, XattrCreate, syscall.EEXIST},
		{"replace missing", f.Ino, "user.c", nil, XattrReplace, syscall.ENODATA},
		{"max value", f.Ino, "user.big", make([]byte, MaxXattrSize), 0, 0},
		{"too big", f.Ino, "user.big", make([]byte, MaxXattrSize+1), 0, syscall.E2BIG},
		{"long name", f.Ino, strings.Repeat("x", 256), nil, 0, syscall.ERANGE},
		{"empty name", f.Ino, "", nil, 0, syscall.EINVAL},
		{"missing ino", 9999, "user.a", nil, 0, syscall.ENOENT},
	}
	for _, tt := range tests {
		wantErrno(t, "SetXattr "+tt.name, s.SetXattr(ctx, tt.ino, tt.key, tt.val, tt.flags, 52), tt.want)
	}
	if v, err := s.GetXattr(ctx, f.Ino, "user.b"); err != nil || !bytes.Equal(v, []byte("3")) {
		t.Fatalf("GetXattr = %q, %v", v, err)
	}
	if v, err := s.GetXattr(ctx, f.Ino, "user.a"); err != nil || len(v) != 0 {
		t.Fatalf("GetXattr empty = %q, %v", v, err)
	}
	_, err := s.GetXattr(ctx, f.Ino, "user.zz")
	wantErrno(t, "GetXattr missing", err, syscall.ENODATA)
	_, err = s.GetXattr(ctx, 9999, "user.a")
	wantErrno(t, "GetXattr missing ino", err, syscall.ENOENT)
	names, err := s.ListXattr(ctx, f.Ino)
	if err != nil || !slices.Equal(names, []string{"user.a", "user.b", "user.big"}) {
		t.Fatalf("ListXattr = %v, %v", names, err)
	}
	if err := s.RemoveXattr(ctx, f.Ino, "user.a", 60); err != nil {
		t.Fatal(err)
	}
	wantErrno(t, "RemoveXattr missing", s.RemoveXattr(ctx, f.Ino, "user.a", 60), syscall.ENODATA)
	wantErrno(t, "RemoveXattr missing ino", s.RemoveXattr(ctx, 9999, "user.a", 60), syscall.ENOENT)
	if names, _ := s.ListXattr(ctx, f.Ino); !slices.Equal(names, []string{"user.b", "user.big"}) {
		t.Fatalf("ListXattr after remove = %v", names)
	}
}

func TestRename(t *testing.T) {
	ctx := context.Background()
	// Layout built fresh for each case:
	//   /a (dir) /a/f (file) /a/sub (dir) /a/sub/deep (dir)
	//   /b (dir) /b/g (file) /b/full (dir) /b/full/x (file) /b/empty (dir)
	//   /h (file) /h2 = hard link of /h
	type tree map[string]Attr
	build := func(t *testing.T) (*Service, tree) {
		s := openTest(t, t.TempDir())
		tr := tree{"/": attr(t, s, RootIno)}
		for _, p := range []struct {
			path string
			mode uint32
		}{
			{"/a", modeDir}, {"/a/f", modeFile}, {"/a/sub", modeDir}, {"/a/sub/deep", modeDir},
			{"/b", modeDir}, {"/b/g", modeFile}, {"/b/full", modeDir}, {"/b/full/x", modeFile},
			{"/b/empty", modeDir}, {"/h", modeFile},
		} {
			i := strings.LastIndexByte(p.path, '/')
			parent := tr[p.path[:i]]
			if i == 0 {
				parent = tr["/"]
			}
			tr[p.path] = mk(t, s, parent.Ino, p.path[i+1:], p.mode)
		}
		if _, err := s.Link(ctx, tr["/h"].Ino, RootIno, "h2", 100); err != nil {
			t.Fatal(err)
		}
		for path, a := range tr {
			tr[path] = attr(t, s, a.Ino)
		}
		return s, tr
	}
	split := func(tr tree, path string) (Ino, string) {
		i := strings.LastIndexByte(path, '/')
		if i == 0 {
			return RootIno, path[1:]
		}
		return tr[path[:i]].Ino, path[i+1:]
	}

	tests := []struct {
		name     string
		from, to string
		flags    RenameFlags
		want     syscall.Errno
		check    func(t *testing.T, s *Service, tr tree, res RenameResult)
	}{
		{name: "file within dir", from: "/a/f", to: "/a/f2", check: func(t *testing.T, s *Service, tr tree, _ RenameResult) {
			if got, _ := s.Lookup(ctx, tr["/a"].Ino, "f2"); got.Ino != tr["/a/f"].Ino {
				t.Error("f2 is not f")
			}
			if _, err := s.Lookup(ctx, tr["/a"].Ino, "f"); err != syscall.ENOENT {
				t.Error("f still there")
			}
			if a := attr(t, s, tr["/a"].Ino); a.Nlink != 3 || a.Mtime != 500 {
				t.Errorf("/a nlink %d mtime %d", a.Nlink, a.Mtime)
			}
		}},
		{name: "file across dirs", from: "/a/f", to: "/b/f"},
		{name: "dir across dirs", from: "/a/sub", to: "/b/sub", check: func(t *testing.T, s *Service, tr tree, _ RenameResult) {
			if a := attr(t, s, tr["/a"].Ino); a.Nlink != 2 {
				t.Errorf("/a nlink %d, want 2", a.Nlink)
			}
			if b := attr(t, s, tr["/b"].Ino); b.Nlink != 5 || b.Mtime != 500 {
				t.Errorf("/b nlink %d mtime %d, want 5", b.Nlink, b.Mtime)
			}
			if sub := attr(t, s, tr["/a/sub"].Ino); sub.Parent != tr["/b"].Ino || sub.Ctime != 500 {
				t.Errorf("sub parent %d ctime %d", sub.Parent, sub.Ctime)
			}
		}},
		{name: "file over file", from: "/a/f", to: "/b/g", check: func(t *testing.T, s *Service, tr tree, res RenameResult) {
			if res.Replaced != tr["/b/g"].Ino || res.ReplacedAttr.Nlink != 0 {
				t.Errorf("result %+v", res)
			}
			if orph, _ := s.Orphans(ctx); !slices.Equal(orph, []Ino{tr["/b/g"].Ino}) {
				t.Errorf("orphans %v", orph)
			}
			if a := attr(t, s, tr["/b/g"].Ino); a.Nlink != 0 {
				t.Errorf("replaced nlink %d", a.Nlink)
			}
		}},
		{name: "file over hard link of other", from: "/a/f", to: "/h2", check: func(t *testing.T, s *Service, tr tree, res RenameResult) {
			if res.Replaced != tr["/h"].Ino || res.ReplacedAttr.Nlink != 1 {
				t.Errorf("result %+v", res)
			}
			if orph, _ := s.Orphans(ctx); len(orph) != 0 {
				t.Errorf("orphans %v", orph)
			}
		}},
		{name: "dir over empty dir", from: "/a/sub", to: "/b/empty", check: func(t *testing.T, s *Service, tr tree, res RenameResult) {
			if res.Replaced != tr["/b/empty"].Ino || res.ReplacedAttr.Nlink != 0 {
				t.Errorf("result %+v", res)
			}
			// The replaced directory is an orphan until purged.
			if got := attr(t, s, tr["/b/empty"].Ino); !got.IsDir() || got.Nlink != 0 {
				t.Errorf("replaced dir %+v, want an orphaned directory", got)
			}
			if orph, _ := s.Orphans(ctx); !slices.Contains(orph, tr["/b/empty"].Ino) {
				t.Errorf("orphans %v, want the replaced dir", orph)
			}
			if a, b := attr(t, s, tr["/a"].Ino), attr(t, s, tr["/b"].Ino); a.Nlink != 2 || b.Nlink != 4 {
				t.Errorf("nlink /a %d /b %d, want 2 4", a.Nlink, b.Nlink)
			}
		}},
		{name: "same inode hard links", from: "/h", to: "/h2", check: func(t *testing.T, s *Service, tr tree, res RenameResult) {
			if res.Replaced != 0 {
				t.Errorf("result %+v", res)
			}
			if _, err := s.Lookup(ctx, RootIno, "h"); err != nil {
				t.Errorf("h vanished: %v", err)
			}
			if a := attr(t, s, tr["/h"].Ino); a.Nlink != 2 {
				t.Errorf("nlink %d", a.Nlink)
			}
		}},
		{name: "onto itself", from: "/a/f", to: "/a/f"},
		{name: "noreplace free", from: "/a/f", to: "/b/new", flags: RenameNoReplace},
		{name: "noreplace taken", from: "/a/f", to: "/b/g", flags: RenameNoReplace, want: syscall.EEXIST},
		{name: "exchange files", from: "/a/f", to: "/b/g", flags: RenameExchange, check: func(t *testing.T, s *Service, tr tree, _ RenameResult) {
			if got, _ := s.Lookup(ctx, tr["/a"].Ino, "f"); got.Ino != tr["/b/g"].Ino {
				t.Error("/a/f is not g")
			}
			if got, _ := s.Lookup(ctx, tr["/b"].Ino, "g"); got.Ino != tr["/a/f"].Ino {
				t.Error("/b/g is not f")
			}
		}},
		{name: "exchange dir and file", from: "/a/sub", to: "/b/g", flags: RenameExchange, check: func(t *testing.T, s *Service, tr tree, _ RenameResult) {
			if a, b := attr(t, s, tr["/a"].Ino), attr(t, s, tr["/b"].Ino); a.Nlink != 2 || b.Nlink != 5 {
				t.Errorf("nlink /a %d /b %d, want 2 5", a.Nlink, b.Nlink)
			}
			if sub := attr(t, s, tr["/a/sub"].Ino); sub.Parent != tr["/b"].Ino {
				t.Errorf("sub parent %d", sub.Parent)
			}
			if got, _ := s.Lookup(ctx, tr["/a"].Ino, "sub"); got.Ino != tr["/b/g"].Ino || !got.IsRegular() {
				t.Errorf("/a/sub is %+v", got)
			}
		}},
		{name: "exchange dirs", from: "/a/sub", to: "/b/full", flags: RenameExchange, check: func(t *testing.T, s *Service, tr tree, _ RenameResult) {
			if a, b := attr(t, s, tr["/a"].Ino), attr(t, s, tr["/b"].Ino); a.Nlink != 3 || b.Nlink != 4 {
				t.Errorf("nlink /a %d /b %d, want 3 4", a.Nlink, b.Nlink)
			}
			if x, y := attr(t, s, tr["/a/sub"].Ino), attr(t, s, tr["/b/full"].Ino); x.Parent != tr["/b"].Ino || y.Parent != tr["/a"].Ino {
				t.Errorf("parents %d %d", x.Parent, y.Parent)
			}
		}},
		{name: "exchange missing target", from: "/a/f", to: "/b/none", flags: RenameExchange, want: syscall.ENOENT},
		{name: "exchange into own subtree", from: "/a", to: "/a/sub/deep", flags: RenameExchange, want: syscall.EINVAL},
		{name: "both flags", from: "/a/f", to: "/b/g", flags: RenameExchange | RenameNoReplace, want: syscall.EINVAL},
		{name: "dir into own subtree", from: "/a", to: "/a/sub/deep/a", want: syscall.EINVAL},
		{name: "dir into itself", from: "/a/sub", to: "/a/sub/x", want: syscall.EINVAL},
		{name: "dir over non-empty dir", from: "/a/sub", to: "/b/full", want: syscall.ENOTEMPTY},
		{name: "dir over file", from: "/a/sub", to: "/b/g", want: syscall.ENOTDIR},
		{name: "file over dir", from: "/a/f", to: "/b/empty", want: syscall.EISDIR},
		{name: "missing source", from: "/a/none", to: "/b/x", want: syscall.ENOENT},
		{name: "target parent is a file", from: "/a/f", to: "/h/x", want: syscall.ENOTDIR},
		{name: "long name", from: "/a/f", to: "/b/" + strings.Repeat("x", 256), want: syscall.ENAMETOOLONG},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, tr := build(t)
			st0, _ := s.StatFS(ctx)
			fp, fn := split(tr, tt.from)
			tp, tn := split(tr, tt.to)
			res, err := s.Rename(ctx, fp, fn, tp, tn, tt.flags, 500)
			wantErrno(t, "Rename", err, tt.want)
			if tt.want != 0 {
				// A failed rename changes nothing.
				for path, a := range tr {
					if path == "/" || path == "/h" {
						continue
					}
					if got := attr(t, s, a.Ino); got != a {
						t.Errorf("%s changed by failed rename: %+v -> %+v", path, a, got)
					}
				}
				return
			}
			if tt.flags&RenameExchange == 0 && tt.from != tt.to && tt.check == nil {
				moved, err := s.Lookup(ctx, tp, tn)
				if err != nil || moved.Ino != tr[tt.from].Ino || moved.Ctime != 500 {
					t.Errorf("target %+v, %v", moved, err)
				}
				if _, err := s.Lookup(ctx, fp, fn); err != syscall.ENOENT {
					t.Errorf("source still there: %v", err)
				}
			}
			if tt.check != nil {
				tt.check(t, s, tr, res)
			}
			st1, _ := s.StatFS(ctx)
			if res.Replaced == 0 && st1 != st0 {
				t.Errorf("statfs changed %+v -> %+v", st0, st1)
			}
		})
	}
}

// TestCreateUnlinked covers O_TMPFILE inodes: born as orphans in no
// directory, named by Link, and refused for anything but regular files.
func TestCreateUnlinked(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	a, err := s.Create(ctx, CreateRequest{Parent: RootIno, Mode: 0o600, Unlinked: true, Now: 10})
	if err != nil {
		t.Fatal(err)
	}
	if !a.IsRegular() || a.Nlink != 0 {
		t.Fatalf("tmpfile attr %+v, want a regular file with nlink 0", a)
	}
	if orphans, _ := s.Orphans(ctx); !slices.Contains(orphans, a.Ino) {
		t.Errorf("orphans %v, want %d", orphans, a.Ino)
	}
	if ents, _ := s.ReadDir(ctx, RootIno, "", 0); len(ents) != 0 {
		t.Errorf("root lists %v, want nothing", ents)
	}
	named, err := s.Link(ctx, a.Ino, RootIno, "named", 11)
	if err != nil {
		t.Fatal(err)
	}
	if named.Nlink != 1 {
		t.Errorf("named tmpfile nlink %d, want 1", named.Nlink)
	}
	if orphans, _ := s.Orphans(ctx); len(orphans) != 0 {
		t.Errorf("orphans %v after naming, want none", orphans)
	}
	for _, bad := range []struct {
		req  CreateRequest
		want syscall.Errno
	}{
		{CreateRequest{Parent: RootIno, Mode: syscall.S_IFDIR | 0o700, Unlinked: true}, syscall.EINVAL},
		{CreateRequest{Parent: RootIno, Name: "x", Mode: 0o600, Unlinked: true}, syscall.EINVAL},
		{CreateRequest{Parent: named.Ino, Mode: 0o600, Unlinked: true}, syscall.ENOTDIR},
	} {
		_, err := s.Create(ctx, bad.req)
		wantErrno(t, "Create unlinked", err, bad.want)
	}
}
