package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"syscall"
	"time"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/meta"
)

// Files is the file API of a mounted file system for servers that are not
// FUSE, such as the S3 gateway. It goes through the same machinery as the
// FUSE operations: the open-file state shared with FUSE handles, the
// write-behind of full blocks, the node's dirty budget, block ids that the
// garbage collector sees in flight until their commit, flushes that put
// immutable blocks and commit them in one meta command, and reads through
// the page cache with readahead for sequential readers.
//
// After a mutation it invalidates this node's kernel caches of the names
// and inodes it changed (the Notifier covers only other nodes' changes).
// Invalidation runs in a separate goroutine and is awaited for at most
// notifyWait: a FUSE notification may block while the kernel holds a lock,
// and the entry and attribute timeouts bound the staleness of a dropped one.
//
// Errors are syscall.Errno values (ENOENT, EEXIST, ENOTDIR, EISDIR,
// ENOTEMPTY, ENAMETOOLONG...) wrapped with context, or internal errors.
type Files struct {
	f  *FS
	fs *fileSystem
	// put publishes objects in one command (nil: the metadata service
	// cannot; NewObject's Commit and Assemble then fail with ENOTSUP).
	put objectMetadata
	// notifySem bounds the invalidations in flight.
	notifySem chan struct{}
}

const (
	// notifyWait is how long a mutation waits for its kernel invalidation.
	notifyWait = 200 * time.Millisecond
	// notifyParallel bounds the invalidation goroutines of a Files.
	notifyParallel = 32
)

// Files returns the non-FUSE file API of f.
func (f *FS) Files() *Files {
	x := &Files{f: f, fs: f.raw, notifySem: make(chan struct{}, notifyParallel)}
	x.put, _ = f.raw.md.(objectMetadata)
	return x
}

// BlockSize returns the file system block size.
func (x *Files) BlockSize() int { return int(x.fs.blockSize) }

// notify invalidates the kernel's caches of changes, waiting notifyWait at
// most. When too many invalidations are pending it gives up at once.
func (x *Files) notify(changes ...meta.Change) {
	select {
	case x.notifySem <- struct{}{}:
	default:
		return
	}
	done := make(chan struct{})
	go func() {
		defer func() { <-x.notifySem }()
		defer close(done)
		x.f.invalidate(changes)
	}()
	t := time.NewTimer(notifyWait)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

func nameErr(name string) error {
	if len(name) > meta.MaxNameLen {
		return fmt.Errorf("name %.32q...: %w", name, syscall.ENAMETOOLONG)
	}
	if name == "" || name == "." || name == ".." {
		return fmt.Errorf("name %q: %w", name, syscall.EINVAL)
	}
	return nil
}

// Lookup returns the attributes of name in directory parent, with this
// node's unflushed size and mtime of a file open here.
func (x *Files) Lookup(ctx context.Context, parent meta.Ino, name string) (meta.Attr, error) {
	if err := nameErr(name); err != nil {
		return meta.Attr{}, err
	}
	a, err := x.fs.md.Lookup(ctx, parent, name)
	if err != nil {
		return meta.Attr{}, fmt.Errorf("lookup %q in %d: %w", name, parent, err)
	}
	x.fs.overlay(&a)
	return a, nil
}

// GetAttr returns the attributes of ino (with the unflushed view, as
// Lookup).
func (x *Files) GetAttr(ctx context.Context, ino meta.Ino) (meta.Attr, error) {
	a, err := x.fs.md.GetAttr(ctx, ino)
	if err != nil {
		return meta.Attr{}, fmt.Errorf("getattr %d: %w", ino, err)
	}
	x.fs.overlay(&a)
	return a, nil
}

// ReadDir returns up to limit entries of directory ino after the name
// after (empty: from the start), in name order.
func (x *Files) ReadDir(ctx context.Context, ino meta.Ino, after string, limit int) ([]meta.Dirent, error) {
	ents, err := x.fs.md.ReadDir(ctx, ino, after, limit)
	if err != nil {
		return nil, fmt.Errorf("readdir %d: %w", ino, err)
	}
	return ents, nil
}

// Mkdir creates directory name in parent with mode (permission bits). If
// a directory of that name exists already it returns its attributes;
// anything else there is EEXIST.
func (x *Files) Mkdir(ctx context.Context, parent meta.Ino, name string, mode uint32) (meta.Attr, error) {
	if err := nameErr(name); err != nil {
		return meta.Attr{}, err
	}
	a, err := x.fs.md.Create(ctx, meta.CreateRequest{Parent: parent, Name: name,
		Mode: mode&07777 | syscall.S_IFDIR, Now: now()})
	if errors.Is(err, syscall.EEXIST) {
		if a, lerr := x.fs.md.Lookup(ctx, parent, name); lerr == nil && a.IsDir() {
			return a, nil
		}
	}
	if err != nil {
		return meta.Attr{}, fmt.Errorf("mkdir %q in %d: %w", name, parent, err)
	}
	x.notify(meta.Change{Kind: meta.ChangeEntry, Parent: parent, Name: name},
		meta.Change{Kind: meta.ChangeInode, Ino: parent})
	return a, nil
}

// Unlink removes the non-directory name from parent. An inode whose last
// link it was is purged once no handle on this node (FUSE or Files) has
// it open.
func (x *Files) Unlink(ctx context.Context, parent meta.Ino, name string) error {
	if err := nameErr(name); err != nil {
		return err
	}
	a, err := x.fs.md.Unlink(ctx, parent, name, now())
	if err != nil {
		return fmt.Errorf("unlink %q in %d: %w", name, parent, err)
	}
	if a.Nlink == 0 {
		x.fs.orphaned(a.Ino)
	}
	x.notify(meta.Change{Kind: meta.ChangeEntryRemoved, Parent: parent, Ino: a.Ino, Name: name},
		meta.Change{Kind: meta.ChangeInode, Ino: parent})
	return nil
}

// Rmdir removes the empty directory name from parent (ENOTEMPTY if it is
// not empty).
func (x *Files) Rmdir(ctx context.Context, parent meta.Ino, name string) error {
	if err := nameErr(name); err != nil {
		return err
	}
	a, err := x.fs.md.Rmdir(ctx, parent, name, now())
	if err != nil {
		return fmt.Errorf("rmdir %q in %d: %w", name, parent, err)
	}
	x.fs.orphaned(a.Ino)
	x.notify(meta.Change{Kind: meta.ChangeEntryRemoved, Parent: parent, Ino: a.Ino, Name: name},
		meta.Change{Kind: meta.ChangeInode, Ino: parent})
	return nil
}

// Rename moves name in parent to newName in newParent, atomically
// replacing what newName named (rename(2): a file replaces a file, a
// directory an empty directory). Readers of the target see the old or the
// new inode, never a mix.
func (x *Files) Rename(ctx context.Context, parent meta.Ino, name string, newParent meta.Ino, newName string) error {
	if err := nameErr(name); err != nil {
		return err
	}
	if err := nameErr(newName); err != nil {
		return err
	}
	res, err := x.fs.md.Rename(ctx, parent, name, newParent, newName, 0, now())
	if err != nil {
		return fmt.Errorf("rename %q in %d to %q in %d: %w", name, parent, newName, newParent, err)
	}
	if res.Replaced != 0 && res.ReplacedAttr.Nlink == 0 {
		x.fs.orphaned(res.Replaced)
	}
	changes := []meta.Change{
		{Kind: meta.ChangeEntryRemoved, Parent: parent, Name: name},
		{Kind: meta.ChangeEntry, Parent: newParent, Name: newName},
		{Kind: meta.ChangeInode, Ino: newParent},
	}
	if res.Replaced != 0 {
		changes = append(changes, meta.Change{Kind: meta.ChangeInode, Ino: res.Replaced})
	}
	x.notify(changes...)
	return nil
}

// GetXattr returns the extended attribute name of ino (ENODATA if unset).
func (x *Files) GetXattr(ctx context.Context, ino meta.Ino, name string) ([]byte, error) {
	v, err := x.fs.md.GetXattr(ctx, ino, name)
	if err != nil {
		return nil, fmt.Errorf("getxattr %q of %d: %w", name, ino, err)
	}
	return v, nil
}

// SetXattr sets the extended attribute name of ino to value.
func (x *Files) SetXattr(ctx context.Context, ino meta.Ino, name string, value []byte) error {
	if err := x.fs.md.SetXattr(ctx, ino, name, value, 0, now()); err != nil {
		return fmt.Errorf("setxattr %q of %d: %w", name, ino, err)
	}
	return nil
}

// open opens regular file ino through the FUSE open path (close-to-open
// refresh of the block map, shared open-file state).
func (x *Files) open(ino meta.Ino, flags uint32) (uint64, *handle, error) {
	fh, st := x.fs.openRegular(ino, flags)
	if !st.Ok() {
		return 0, nil, fmt.Errorf("open inode %d: %w", ino, syscall.Errno(st))
	}
	h := x.fs.handle(fh)
	if h == nil {
		return 0, nil, fmt.Errorf("open inode %d: %w", ino, syscall.EBADF)
	}
	return fh, h, nil
}

// release drops the handle fh like a FUSE release: the last reference
// flushes what is dirty, or purges an unlinked inode.
func (x *Files) release(fh uint64) {
	x.fs.mu.Lock()
	h := x.fs.fhs[fh]
	delete(x.fs.fhs, fh)
	x.fs.mu.Unlock()
	if h != nil {
		x.fs.unref(h.file)
	}
}

// Writer writes a new regular file sequentially. Create it with Create,
// write with Write, make it durable with Commit, and Close it; Abort
// instead removes the file and drops its unflushed data.
type Writer struct {
	x      *Files
	fh     uint64
	h      *handle
	ino    meta.Ino
	parent meta.Ino
	name   string
	off    uint64
	closed bool
}

// Create creates the regular file name in parent (EEXIST if the name is
// taken) and opens it for writing.
func (x *Files) Create(ctx context.Context, parent meta.Ino, name string, mode uint32) (*Writer, error) {
	if err := nameErr(name); err != nil {
		return nil, err
	}
	a, err := x.fs.md.Create(ctx, meta.CreateRequest{Parent: parent, Name: name,
		Mode: mode&07777 | syscall.S_IFREG, Now: now()})
	if err != nil {
		return nil, fmt.Errorf("create %q in %d: %w", name, parent, err)
	}
	fh, h, err := x.open(a.Ino, syscall.O_WRONLY)
	if err != nil {
		_, _ = x.fs.md.Unlink(ctx, parent, name, now())
		return nil, err
	}
	return &Writer{x: x, fh: fh, h: h, ino: a.Ino, parent: parent, name: name}, nil
}

// Ino returns the inode of the file being written.
func (w *Writer) Ino() meta.Ino { return w.ino }

// Size returns the bytes written so far.
func (w *Writer) Size() uint64 { return w.off }

// Write appends p. Memory stays bounded by the node's dirty budget: full
// blocks are written behind, and a writer over budget flushes first.
func (w *Writer) Write(ctx context.Context, p []byte) (int, error) {
	if w.closed {
		return 0, fmt.Errorf("write inode %d: %w", w.ino, syscall.EBADF)
	}
	fs, f := w.x.fs, w.h.file
	n := 0
	for len(p) > 0 {
		c := p[:min(len(p), maxWrite)]
		end := w.off + uint64(len(c))
		f.mu.Lock()
		err := fs.reserveLocked(ctx, f, w.off, uint64(len(c)))
		if err == nil {
			if err = fs.writeLocked(ctx, f, w.off, c); err != nil {
				fs.budget.release(fs.unusedReservation(f, w.off, end))
			} else {
				w.off = end
				f.size = max(f.size, end)
				f.mtime = now()
			}
		}
		f.mu.Unlock()
		if err != nil {
			return n, fmt.Errorf("write inode %d at %d: %w", w.ino, w.off, err)
		}
		n += len(c)
		p = p[len(c):]
	}
	return n, nil
}

// ReadFrom copies r to the file until EOF, in bufSize chunks; it returns
// the bytes written. A read error other than io.EOF is returned as is.
func (w *Writer) ReadFrom(ctx context.Context, r io.Reader, bufSize int) (int64, error) {
	buf := make([]byte, bufSize)
	var total int64
	for {
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if _, werr := w.Write(ctx, buf[:n]); werr != nil {
				return total, werr
			}
			total += int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// Commit makes what was written durable (like fsync: blocks in the store,
// block map, size and mtime committed in meta) and returns the file's
// attributes.
func (w *Writer) Commit(ctx context.Context) (meta.Attr, error) {
	if w.closed {
		return meta.Attr{}, fmt.Errorf("commit inode %d: %w", w.ino, syscall.EBADF)
	}
	f := w.h.file
	f.mu.Lock()
	err := w.x.fs.flushLocked(ctx, f)
	f.mu.Unlock()
	if err != nil {
		return meta.Attr{}, fmt.Errorf("commit inode %d: %w", w.ino, err)
	}
	a, err := w.x.fs.md.GetAttr(ctx, w.ino)
	if err != nil {
		return meta.Attr{}, fmt.Errorf("commit inode %d: %w", w.ino, err)
	}
	return a, nil
}

// Close releases the file. Data not committed is flushed by the release,
// as on a FUSE close; call Commit first to see errors.
func (w *Writer) Close() {
	if w.closed {
		return
	}
	w.closed = true
	w.x.release(w.fh)
}

// Abort removes the file from the directory it was created in (if it is
// still there) and releases it: its unflushed data is dropped and the
// inode purged.
func (w *Writer) Abort(ctx context.Context) {
	if w.closed {
		return
	}
	if a, err := w.x.fs.md.Lookup(ctx, w.parent, w.name); err == nil && a.Ino == w.ino {
		_ = w.x.Unlink(ctx, w.parent, w.name)
	}
	w.Close()
}

// Reader reads a regular file. It sees the file as of its open (a
// replacement by rename leaves it on the old inode) plus later writes of
// this node.
type Reader struct {
	x    *Files
	fh   uint64
	h    *handle
	attr meta.Attr
}

// Open opens regular file ino for reading (EISDIR for a directory).
func (x *Files) Open(ctx context.Context, ino meta.Ino) (*Reader, error) {
	fh, h, err := x.open(ino, syscall.O_RDONLY)
	if err != nil {
		return nil, err
	}
	a, err := x.GetAttr(ctx, ino)
	if err != nil {
		x.release(fh)
		return nil, err
	}
	h.file.mu.RLock()
	a.Size = h.file.size
	h.file.mu.RUnlock()
	return &Reader{x: x, fh: fh, h: h, attr: a}, nil
}

// Attr returns the attributes of the file at open, Size being the size
// the reader sees.
func (r *Reader) Attr() meta.Attr { return r.attr }

// ReadAt reads len(p) bytes at off; at the end of the file it returns
// fewer with io.EOF. Sequential callers get readahead, as FUSE readers do.
func (r *Reader) ReadAt(ctx context.Context, p []byte, off uint64) (int, error) {
	fs, f := r.x.fs, r.h.file
	f.mu.RLock()
	defer f.mu.RUnlock()
	if off >= f.size {
		return 0, io.EOF
	}
	n := min(uint64(len(p)), f.size-off)
	access := cache.AccessRandom
	if fs.observeRead(r.h, f, off, n) {
		access = cache.AccessSequential
	}
	if err := fs.readLocked(ctx, f, off, p[:n], access); err != nil {
		return 0, fmt.Errorf("read inode %d at %d: %w", r.attr.Ino, off, err)
	}
	if n < uint64(len(p)) {
		return int(n), io.EOF
	}
	return int(n), nil
}

// ReadAhead tells the reader that it is about to read sequentially from
// off (a GET of a whole object or range): the first ReadAt at off already
// counts as sequential and starts readahead, instead of the second.
func (r *Reader) ReadAhead(off uint64) {
	ra := &r.h.ra
	ra.mu.Lock()
	if !ra.started {
		ra.started, ra.seq, ra.end, ra.next = true, true, off, 0
	}
	ra.mu.Unlock()
}

// Close releases the file.
func (r *Reader) Close() { r.x.release(r.fh) }
