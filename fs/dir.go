package fs

import (
	"context"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/datenlord/datenlord-go/meta"
)

// dirPage is how many entries are fetched from meta at a time.
const dirPage = 512

// dirHandle is an open directory. It keeps the listing read so far, so
// that an offset names the same entry for the life of the handle
// (telldir/seekdir, and a getdents that resumes after a short buffer):
// entry i of the listing has offset i+1, with "." and ".." first. The
// listing is extended page by page from meta, resuming after the last
// name, and taken afresh when reading restarts at offset 0 (rewinddir).
type dirHandle struct {
	ino meta.Ino
	// ref keeps the directory from being purged while it is open (it can
	// be renamed over while open, and fstat must still work).
	ref *openFile

	mu      sync.Mutex
	entries []meta.Dirent
	eof     bool
}

func (fs *fileSystem) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) (code fuse.Status) {
	defer fs.m.done(opOpenDir, time.Now(), &code)
	a, err := fs.md.GetAttr(fs.ctx(), meta.Ino(in.NodeId))
	if err != nil {
		return fs.toStatus("opendir", err)
	}
	if !a.IsDir() {
		return fuse.ENOTDIR
	}
	ref, _ := fs.acquire(a.Ino)
	d := &dirHandle{ino: a.Ino, ref: ref}
	fs.mu.Lock()
	fs.nextFh++
	fh := fs.nextFh
	fs.dirs[fh] = d
	fs.mu.Unlock()
	out.Fh = fh
	out.OpenFlags = 0
	return fuse.OK
}

func (fs *fileSystem) ReleaseDir(in *fuse.ReleaseIn) {
	code := fuse.OK
	defer fs.m.done(opReleaseDir, time.Now(), &code)
	fs.mu.Lock()
	d := fs.dirs[in.Fh]
	delete(fs.dirs, in.Fh)
	fs.mu.Unlock()
	if d != nil {
		fs.unref(d.ref)
	}
}

func (fs *fileSystem) FsyncDir(cancel <-chan struct{}, in *fuse.FsyncIn) (code fuse.Status) {
	defer fs.m.done(opFsyncDir, time.Now(), &code)
	// Directory changes are committed by the operation that makes them.
	return fuse.OK
}

// restart takes a new listing: "." and ".." and nothing else yet.
func (fs *fileSystem) restart(ctx context.Context, d *dirHandle) error {
	a, err := fs.md.GetAttr(ctx, d.ino)
	if err != nil {
		return err
	}
	parent := a.Parent
	if parent == 0 {
		parent = d.ino
	}
	d.entries = append(d.entries[:0],
		meta.Dirent{Name: ".", Ino: d.ino, Mode: syscall.S_IFDIR},
		meta.Dirent{Name: "..", Ino: parent, Mode: syscall.S_IFDIR})
	d.eof = false
	return nil
}

// entryAt returns listing entry i, fetching pages as needed; ok is false
// past the end.
func (fs *fileSystem) entryAt(ctx context.Context, d *dirHandle, i uint64) (meta.Dirent, bool, error) {
	for uint64(len(d.entries)) <= i && !d.eof {
		after := ""
		if len(d.entries) > 2 {
			after = d.entries[len(d.entries)-1].Name
		}
		page, err := fs.md.ReadDir(ctx, d.ino, after, dirPage)
		if err != nil {
			return meta.Dirent{}, false, err
		}
		d.entries = append(d.entries, page...)
		d.eof = len(page) < dirPage
	}
	if i < uint64(len(d.entries)) {
		return d.entries[i], true, nil
	}
	return meta.Dirent{}, false, nil
}

func (fs *fileSystem) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) (code fuse.Status) {
	defer fs.m.done(opReadDir, time.Now(), &code)
	return fs.readDir(in, out, false)
}

func (fs *fileSystem) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) (code fuse.Status) {
	defer fs.m.done(opReadDirPlus, time.Now(), &code)
	return fs.readDir(in, out, true)
}

func (fs *fileSystem) readDir(in *fuse.ReadIn, out *fuse.DirEntryList, plus bool) fuse.Status {
	fs.mu.RLock()
	d := fs.dirs[in.Fh]
	fs.mu.RUnlock()
	if d == nil {
		return fuse.EBADF
	}
	ctx := fs.ctx()
	d.mu.Lock()
	defer d.mu.Unlock()
	if in.Offset == 0 || len(d.entries) == 0 {
		if err := fs.restart(ctx, d); err != nil {
			return fs.toStatus("readdir", err)
		}
	}
	for i := in.Offset; ; i++ {
		e, ok, err := fs.entryAt(ctx, d, i)
		if err != nil {
			return fs.toStatus("readdir", err)
		}
		if !ok {
			return fuse.OK
		}
		de := fuse.DirEntry{Name: e.Name, Ino: uint64(e.Ino), Mode: e.Mode, Off: i + 1}
		if !plus {
			if !out.AddDirEntry(de) {
				return fuse.OK
			}
			continue
		}
		eo := out.AddDirLookupEntry(de)
		if eo == nil {
			return fuse.OK
		}
		if e.Name == "." || e.Name == ".." {
			continue // the kernel does not look these up
		}
		a, err := fs.md.GetAttr(ctx, e.Ino)
		if err != nil {
			// Gone meanwhile: a zero entry makes the kernel look it up.
			continue
		}
		fs.fillEntry(&a, eo)
	}
}
