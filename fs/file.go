package fs

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/meta"
)

// openFile is the state of an inode that is open on this node, shared by
// all its handles and refcounted by them. Regular files carry their data
// state; directories (and inodes being purged) only use the refcount,
// which defers the purge of an unlinked inode to the last release.
type openFile struct {
	ino meta.Ino

	// Guarded by fileSystem.mu.
	refs     int
	unlinked bool // nlink reached 0: purge on the last release

	// mu guards the fields below. Reads take it shared; writes, flushes
	// and truncation take it exclusively, so a flush never races a write
	// of the same file.
	mu       sync.RWMutex
	blocks   meta.BlockMap
	loadedAt uint64 // meta applied index read before blocks was loaded
	size     uint64 // this node's view, including dirty writes
	mtime    int64
	dirty    map[uint64]*dirtyBlock // by block index
}

// dirtyBlock is a whole block of merged content that is not yet
// committed: old bytes read on first write, overwritten by new writes.
type dirtyBlock struct {
	buf []byte // len == block size
	// up is the write-behind upload of this block's current content, nil
	// if none: a block that a write completes is sent to the store at once,
	// so a later flush only has to commit it.
	up *upload
}

// upload is one background store write of a full dirty block. The block
// id stays in flight (fs.ids) until a commit names it or it is abandoned.
type upload struct {
	id   meta.BlockID
	done chan struct{}
	err  error // valid after done
}

// handle is an open file handle (one open file description).
type handle struct {
	file   *openFile
	append bool
	ra     readahead // sequential detection and readahead state
}

// acquire returns the open-file state of ino with one more reference,
// creating it if needed.
func (fs *fileSystem) acquire(ino meta.Ino) (f *openFile, created bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f = fs.files[ino]
	if f == nil {
		f = &openFile{ino: ino, dirty: make(map[uint64]*dirtyBlock)}
		fs.files[ino] = f
		created = true
	}
	f.refs++
	return f, created
}

// acquireExisting is acquire for a file that is already open, or nil.
func (fs *fileSystem) acquireExisting(ino meta.Ino) *openFile {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f := fs.files[ino]
	if f != nil {
		f.refs++
	}
	return f
}

// unref drops a reference. The last one flushes what is still dirty
// (logging errors: nobody is left to report them to), purges the inode if
// it was unlinked meanwhile and forgets the state. The purge itself runs
// in the background (see purge); meta refuses to purge an inode that any
// node, this one included, has open again by then.
func (fs *fileSystem) unref(f *openFile) {
	fs.mu.Lock()
	f.refs--
	last := f.refs == 0
	fs.mu.Unlock()
	if !last {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	fs.mu.RLock()
	dead := f.unlinked
	fs.mu.RUnlock()
	if dead {
		// No name and no handle: nobody can ever read these writes.
		fs.dropDirty(f)
	} else if len(f.dirty) > 0 {
		if err := fs.flushLocked(fs.ctx(), f); err != nil {
			fs.log.Error("fs: flush on release failed, dropping unflushed writes",
				"ino", f.ino, "dirty_blocks", len(f.dirty), "err", err)
			fs.dropDirty(f)
		}
	}
	fs.mu.Lock()
	purge := f.refs == 0 && f.unlinked
	fs.mu.Unlock()
	if purge {
		fs.purge(f.ino)
	}
	fs.mu.Lock()
	if f.refs == 0 && fs.files[f.ino] == f {
		delete(fs.files, f.ino)
	}
	fs.mu.Unlock()
}

// dropDirty forgets the dirty blocks of f and their budget. Uploads that
// a commit did not take are abandoned.
func (fs *fileSystem) dropDirty(f *openFile) {
	for _, d := range f.dirty {
		fs.abandon(d)
	}
	fs.budget.release(int64(len(f.dirty)) * int64(fs.blockSize))
	clear(f.dirty)
}

// startUpload sends a dirty block that a write just completed to the
// store in the background (f.mu held). Without an id it does nothing: the
// flush uploads the block itself.
func (fs *fileSystem) startUpload(ctx context.Context, f *openFile, d *dirtyBlock) {
	ids, err := fs.ids.alloc(ctx, 1)
	if err != nil {
		fs.log.Debug("fs: write-behind: no block id; the flush uploads the block", "ino", f.ino, "err", err)
		return
	}
	u := &upload{id: ids[0], done: make(chan struct{})}
	d.up = u
	data := d.buf // writes to the block wait for the upload (abandon)
	go func() {
		defer close(u.done)
		fs.upSem <- struct{}{}
		defer func() { <-fs.upSem }()
		if u.err = fs.store.Put(fs.ctx(), uint64(u.id), data); u.err == nil {
			fs.cache.PutBlock(fs.ctx(), uint64(u.id), data, cache.AccessRandom)
		}
	}()
}

// abandon waits for a block's upload, if any, and gives its id up: the
// uploaded copy is stale (the block changed) or not needed. The block
// itself is deleted in the background; if that fails, the garbage
// collector's store sweep finds it.
func (fs *fileSystem) abandon(d *dirtyBlock) {
	u := d.up
	if u == nil {
		return
	}
	d.up = nil
	<-u.done
	if u.err != nil {
		fs.ids.done([]meta.BlockID{u.id})
		return
	}
	go func() {
		if err := fs.store.Delete(fs.ctx(), uint64(u.id)); err != nil {
			fs.log.Debug("fs: delete abandoned write-behind block", "block", u.id, "err", err)
		}
		fs.ids.done([]meta.BlockID{u.id})
	}()
}

// loadBlocks (re)loads the block map of f; f.mu must be held. The applied
// index is read first, so garbage freed at or below it is not in the map.
func (fs *fileSystem) loadBlocks(ctx context.Context, f *openFile) error {
	idx := fs.md.AppliedIndex()
	bm, err := fs.md.Blocks(ctx, f.ino)
	if err != nil {
		return fmt.Errorf("load block map of inode %d: %w", f.ino, err)
	}
	if bm == nil {
		bm = make(meta.BlockMap)
	}
	f.blocks = bm
	f.loadedAt = idx
	return nil
}

// oldestOpenIndex is FS.OldestOpenIndex.
func (fs *fileSystem) oldestOpenIndex() (uint64, bool) {
	fs.mu.RLock()
	files := slices.Collect(maps.Values(fs.files))
	fs.mu.RUnlock()
	var oldest uint64
	found := false
	for _, f := range files {
		f.mu.RLock()
		idx, loaded := f.loadedAt, f.blocks != nil
		f.mu.RUnlock()
		if !loaded {
			continue // a directory, or a file whose open failed
		}
		if !found || idx < oldest {
			oldest, found = idx, true
		}
	}
	return oldest, found
}

// openRegular opens ino for a new handle: it refreshes the block map
// (close-to-open) unless this node holds unflushed writes, which are newer.
func (fs *fileSystem) openRegular(ino meta.Ino, flags uint32) (uint64, fuse.Status) {
	ctx := fs.ctx()
	f, _ := fs.acquire(ino)
	f.mu.Lock()
	a, err := fs.md.GetAttr(ctx, ino)
	st := fs.toStatus("open", err)
	if st.Ok() && !a.IsRegular() {
		st = fuse.EINVAL
		if a.IsDir() {
			st = fuse.EISDIR
		}
	}
	if st.Ok() && len(f.dirty) == 0 {
		if err := fs.loadBlocks(ctx, f); err != nil {
			st = fs.toStatus("open", err)
		}
		f.size = a.Size
		f.mtime = a.Mtime
	}
	f.mu.Unlock()
	if !st.Ok() {
		fs.unref(f)
		return 0, st
	}
	if flags&syscall.O_TRUNC != 0 && flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		if _, st := fs.setAttr(ino, meta.SetAttrRequest{Valid: meta.SetSize, Now: now()}, false); !st.Ok() {
			fs.unref(f)
			return 0, st
		}
	}
	h := &handle{file: f, append: flags&syscall.O_APPEND != 0}
	fs.mu.Lock()
	fs.nextFh++
	fh := fs.nextFh
	fs.fhs[fh] = h
	fs.mu.Unlock()
	return fh, fuse.OK
}

func (fs *fileSystem) handle(fh uint64) *handle {
	fs.mu.RLock()
	defer fs.mu.RUnlock()
	return fs.fhs[fh]
}

func (fs *fileSystem) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) (code fuse.Status) {
	defer fs.m.done(opOpen, time.Now(), &code)
	fh, st := fs.openRegular(meta.Ino(in.NodeId), in.Flags)
	if !st.Ok() {
		return st
	}
	out.Fh = fh
	// No FOPEN_KEEP_CACHE: the kernel drops its cached pages of the file
	// on every open (close-to-open). Open flags are never echoed back.
	out.OpenFlags = 0
	return fuse.OK
}

func (fs *fileSystem) Create(cancel <-chan struct{}, in *fuse.CreateIn, name string, out *fuse.CreateOut) (code fuse.Status) {
	defer fs.m.done(opCreate, time.Now(), &code)
	a, st := fs.create(&in.InHeader, name, in.Mode&07777|syscall.S_IFREG, 0, "")
	if st == fuse.Status(syscall.EEXIST) && in.Flags&syscall.O_EXCL == 0 {
		// Lost a race with another creator: open what is there.
		var err error
		a, err = fs.md.Lookup(fs.ctx(), meta.Ino(in.NodeId), name)
		st = fs.toStatus("create", err)
	}
	if !st.Ok() {
		return st
	}
	fh, st := fs.openRegular(a.Ino, in.Flags)
	if !st.Ok() {
		return st
	}
	fs.fillEntry(&a, &out.EntryOut)
	out.Fh = fh
	out.OpenFlags = 0
	return fuse.OK
}

// Tmpfile creates an O_TMPFILE file: an orphan from birth, purged on its
// last close unless linkat(2) names it first.
func (fs *fileSystem) Tmpfile(cancel <-chan struct{}, in *fuse.CreateIn, out *fuse.CreateOut) (code fuse.Status) {
	defer fs.m.done(opCreate, time.Now(), &code)
	a, err := fs.md.Create(fs.ctx(), meta.CreateRequest{
		Parent:   meta.Ino(in.NodeId),
		Mode:     in.Mode&07777 | syscall.S_IFREG,
		Uid:      in.Uid,
		Gid:      in.Gid,
		Now:      now(),
		Unlinked: true,
	})
	if err != nil {
		return fs.toStatus("tmpfile", err)
	}
	fh, st := fs.openRegular(a.Ino, in.Flags)
	if !st.Ok() {
		fs.purge(a.Ino)
		return st
	}
	fs.mu.Lock()
	fs.fhs[fh].file.unlinked = true
	fs.mu.Unlock()
	fs.fillEntry(&a, &out.EntryOut)
	out.Fh = fh
	out.OpenFlags = 0
	return fuse.OK
}

func (fs *fileSystem) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	var code fuse.Status
	defer fs.m.done(opRelease, time.Now(), &code)
	fs.mu.Lock()
	h := fs.fhs[in.Fh]
	delete(fs.fhs, in.Fh)
	fs.mu.Unlock()
	if h != nil {
		fs.unref(h.file)
	}
}

func (fs *fileSystem) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (_ fuse.ReadResult, code fuse.Status) {
	defer fs.m.done(opRead, time.Now(), &code)
	h := fs.handle(in.Fh)
	if h == nil {
		return nil, fuse.EBADF
	}
	f := h.file
	f.mu.RLock()
	defer f.mu.RUnlock()
	if in.Offset >= f.size {
		return fuse.ReadResultData(nil), fuse.OK
	}
	n := min(uint64(in.Size), f.size-in.Offset, uint64(len(buf)))
	dst := buf[:n]
	access := cache.AccessRandom
	if fs.observeRead(h, f, in.Offset, n) { // readahead.go
		access = cache.AccessSequential
		if pp, ok := fs.cache.(prefetchPinner); ok {
			r, err := fs.readSequential(fs.ctx(), f, in.Offset, dst, pp) // readdirect.go
			if err != nil {
				return nil, fs.toStatus("read", err)
			}
			return r, fuse.OK
		}
	}
	if err := fs.readLocked(fs.ctx(), f, in.Offset, dst, access); err != nil {
		return nil, fs.toStatus("read", err)
	}
	return fuse.ReadResultData(dst), fuse.OK
}

// readLocked fills dst with the file bytes at off (f.mu held, off+len(dst)
// <= f.size): dirty blocks from memory, holes as zeros, the rest from the
// page cache.
func (fs *fileSystem) readLocked(ctx context.Context, f *openFile, off uint64, dst []byte, access cache.Access) error {
	bs := fs.blockSize
	for len(dst) > 0 {
		bi, boff := off/bs, off%bs
		chunk := min(uint64(len(dst)), bs-boff)
		if d := f.dirty[bi]; d != nil {
			copy(dst[:chunk], d.buf[boff:])
		} else if ref, ok := f.blocks[bi]; ok && ref.ID != 0 {
			if err := fs.readBlock(ctx, ref, boff, dst[:chunk], access); err != nil {
				return err
			}
		} else {
			clear(dst[:chunk])
		}
		dst = dst[chunk:]
		off += chunk
	}
	return nil
}

// readBlock reads bytes [boff, boff+len(dst)) of a stored block through
// the cache; bytes at or past ref.Len are zeros.
func (fs *fileSystem) readBlock(ctx context.Context, ref meta.BlockRef, boff uint64, dst []byte, access cache.Access) error {
	ps := fs.pageSize
	blen := uint64(ref.Len)
	for len(dst) > 0 {
		pi, poff := boff/ps, boff%ps
		chunk := min(uint64(len(dst)), ps-poff)
		pageStart := pi * ps
		if pageStart >= blen {
			clear(dst[:chunk])
		} else {
			valid := int(min(ps, blen-pageStart))
			key := cache.PageKey{Block: uint64(ref.ID), Index: uint32(pi)}
			if poff == 0 && chunk == ps {
				n, err := fs.cache.ReadPage(ctx, key, valid, dst[:ps], access)
				if err != nil {
					return fmt.Errorf("read block %d page %d: %w", ref.ID, pi, err)
				}
				clear(dst[min(n, valid):ps])
			} else {
				pb := fs.pages.Get().(*[]byte)
				page := *pb
				n, err := fs.cache.ReadPage(ctx, key, valid, page, access)
				if err != nil {
					fs.pages.Put(pb)
					return fmt.Errorf("read block %d page %d: %w", ref.ID, pi, err)
				}
				n = min(n, valid)
				clear(page[n:])
				copy(dst[:chunk], page[poff:])
				fs.pages.Put(pb)
			}
		}
		dst = dst[chunk:]
		boff += chunk
	}
	return nil
}

func (fs *fileSystem) Write(cancel <-chan struct{}, in *fuse.WriteIn, data []byte) (uint32, fuse.Status) {
	return fs.Writev(cancel, in, [][]byte{data})
}

func (fs *fileSystem) Writev(cancel <-chan struct{}, in *fuse.WriteIn, data [][]byte) (written uint32, code fuse.Status) {
	defer fs.m.done(opWrite, time.Now(), &code)
	h := fs.handle(in.Fh)
	if h == nil {
		return 0, fuse.EBADF
	}
	var total uint64
	for _, d := range data {
		total += uint64(len(d))
	}
	f := h.file
	ctx := fs.ctx()
	f.mu.Lock()
	defer f.mu.Unlock()
	off := in.Offset
	if h.append {
		off = f.size
	}
	if off+total < off {
		return 0, fuse.Status(syscall.EFBIG)
	}
	if err := fs.reserveLocked(ctx, f, off, total); err != nil {
		return 0, fs.flushStatus("write", err)
	}
	pos := off
	for _, d := range data {
		if err := fs.writeLocked(ctx, f, pos, d); err != nil {
			fs.budget.release(fs.unusedReservation(f, pos, off+total))
			return uint32(pos - off), fs.toStatus("write", err)
		}
		pos += uint64(len(d))
	}
	if pos > f.size {
		f.size = pos
	}
	f.mtime = now()
	return uint32(total), fuse.OK
}

// newBlocks counts the blocks of [off, end) that are not dirty yet.
func (fs *fileSystem) newBlocks(f *openFile, off, end uint64) int64 {
	if end <= off {
		return 0
	}
	var n int64
	for bi := off / fs.blockSize; bi <= (end-1)/fs.blockSize; bi++ {
		if f.dirty[bi] == nil {
			n++
		}
	}
	return n
}

func (fs *fileSystem) unusedReservation(f *openFile, off, end uint64) int64 {
	return fs.newBlocks(f, off, end) * int64(fs.blockSize)
}

// reserveLocked takes dirty budget for the new dirty blocks of a write of
// n bytes at off (f.mu held). Over budget, it flushes this file first,
// then the other dirty files, so memory stays bounded.
func (fs *fileSystem) reserveLocked(ctx context.Context, f *openFile, off, n uint64) error {
	for attempt := 0; ; attempt++ {
		need := fs.newBlocks(f, off, off+n) * int64(fs.blockSize)
		if fs.budget.tryAcquire(need) {
			return nil
		}
		if len(f.dirty) > 0 {
			if err := fs.flushLocked(ctx, f); err != nil {
				return err
			}
			continue
		}
		// Others hold the budget: flush them without holding our lock
		// (they may be waiting for theirs).
		f.mu.Unlock()
		err := fs.flushAllExcept(ctx, f)
		if attempt > 2 {
			time.Sleep(time.Millisecond * time.Duration(min(attempt, 50)))
		}
		f.mu.Lock()
		if err != nil {
			return err
		}
	}
}

// writeLocked copies data into the dirty blocks at off (budget reserved).
func (fs *fileSystem) writeLocked(ctx context.Context, f *openFile, off uint64, data []byte) error {
	bs := fs.blockSize
	for len(data) > 0 {
		bi, boff := off/bs, off%bs
		chunk := min(uint64(len(data)), bs-boff)
		d := f.dirty[bi]
		if d == nil {
			d = &dirtyBlock{buf: make([]byte, bs)}
			if boff != 0 || chunk != bs {
				// Partial write: merge with the old content.
				start := bi * bs
				if ref, ok := f.blocks[bi]; ok && ref.ID != 0 && start < f.size {
					valid := min(uint64(ref.Len), f.size-start, bs)
					if err := fs.readBlock(ctx, ref, 0, d.buf[:valid], cache.AccessRandom); err != nil {
						return err
					}
				}
			}
			f.dirty[bi] = d
		}
		fs.abandon(d) // its upload, if any, no longer matches the block
		copy(d.buf[boff:], data[:chunk])
		if boff+chunk == bs {
			// The write reached the end of the block: a sequential writer is
			// done with it, so start writing it behind.
			fs.startUpload(ctx, f, d)
		}
		data = data[chunk:]
		off += chunk
	}
	return nil
}

// putError marks a failed store write, whose errno is reported as ENOSPC
// or EIO.
type putError struct{ err error }

func (e *putError) Error() string { return e.err.Error() }
func (e *putError) Unwrap() error { return e.err }

func (fs *fileSystem) flushStatus(op string, err error) fuse.Status {
	if err == nil {
		return fuse.OK
	}
	var pe *putError
	if errors.As(err, &pe) {
		return fs.storeStatus(op, err)
	}
	return fs.toStatus(op, err)
}

// writeBehindParallel bounds the background uploads of full blocks on the
// node; flushParallelism bounds the block writes of one flush.
const writeBehindParallel = 8

// flushParallelism bounds the concurrent block writes of one flush.
const flushParallelism = 6

// flushLocked writes every dirty block of f as a new block, then commits
// them with size and mtime in one meta command (f.mu held). On error the
// data stays dirty and the metadata is untouched.
func (fs *fileSystem) flushLocked(ctx context.Context, f *openFile) error {
	if len(f.dirty) == 0 {
		return nil
	}
	bs := fs.blockSize
	refs := make(map[uint64]meta.BlockRef, len(f.dirty))
	// Blocks written behind are committed as they are; the others (and any
	// whose upload failed) are uploaded now.
	var behind, need []uint64
	for _, bi := range slices.Sorted(maps.Keys(f.dirty)) {
		d, start := f.dirty[bi], bi*bs
		if start >= f.size {
			fs.abandon(d)
			refs[bi] = meta.BlockRef{} // hole: nothing of it is in the file
			continue
		}
		valid := min(bs, f.size-start)
		if u := d.up; u != nil && valid == bs {
			<-u.done
			if u.err == nil {
				refs[bi] = meta.BlockRef{ID: u.id, Len: uint32(valid)}
				behind = append(behind, bi)
				continue
			}
		}
		fs.abandon(d)
		need = append(need, bi)
	}
	ids, err := fs.ids.alloc(ctx, len(need))
	if err != nil {
		return fmt.Errorf("flush inode %d: %w", f.ino, err)
	}
	defer fs.ids.done(ids)
	var (
		wg      sync.WaitGroup
		sem     = make(chan struct{}, flushParallelism)
		errMu   sync.Mutex
		firstEr error
	)
	for i, bi := range need {
		valid := min(bs, f.size-bi*bs)
		refs[bi] = meta.BlockRef{ID: ids[i], Len: uint32(valid)}
		data := f.dirty[bi].buf[:valid]
		id := uint64(ids[i])
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			if err := fs.store.Put(ctx, id, data); err != nil {
				errMu.Lock()
				if firstEr == nil {
					firstEr = &putError{fmt.Errorf("flush inode %d: put block %d: %w", f.ino, id, err)}
				}
				errMu.Unlock()
				return
			}
			fs.cache.PutBlock(ctx, id, data, cache.AccessRandom)
		})
	}
	wg.Wait()
	if firstEr != nil {
		return firstEr
	}
	t := now()
	a, err := fs.md.CommitWrite(ctx, meta.WriteCommit{
		Ino:       f.ino,
		Blocks:    refs,
		Size:      f.size,
		Mtime:     f.mtime,
		Now:       t,
		BlockSize: uint32(bs),
	})
	if err != nil {
		return fmt.Errorf("flush inode %d: commit: %w", f.ino, err)
	}
	// The commit names the written-behind blocks: they are no longer in
	// flight, and dropDirty must not abandon them.
	for _, bi := range behind {
		d := f.dirty[bi]
		fs.ids.done([]meta.BlockID{d.up.id})
		d.up = nil
	}
	fs.dropDirty(f)
	f.size = a.Size
	f.mtime = a.Mtime
	if err := fs.loadBlocks(ctx, f); err != nil {
		// The commit succeeded; keep serving from the local view.
		fs.log.Warn("fs: reload block map after commit", "ino", f.ino, "err", err)
		for bi, ref := range refs {
			if ref.ID == 0 {
				delete(f.blocks, bi)
			} else {
				f.blocks[bi] = ref
			}
		}
	}
	return nil
}

// flushFile flushes the file of a handle.
func (fs *fileSystem) flushHandle(fh uint64, op string) fuse.Status {
	h := fs.handle(fh)
	if h == nil {
		return fuse.EBADF
	}
	f := h.file
	f.mu.Lock()
	defer f.mu.Unlock()
	return fs.flushStatus(op, fs.flushLocked(fs.ctx(), f))
}

// Flush is called on every close(2) of a descriptor: it is the durability
// point of close-to-open consistency.
func (fs *fileSystem) Flush(cancel <-chan struct{}, in *fuse.FlushIn) (code fuse.Status) {
	defer fs.m.done(opFlush, time.Now(), &code)
	return fs.flushHandle(in.Fh, "flush")
}

func (fs *fileSystem) Fsync(cancel <-chan struct{}, in *fuse.FsyncIn) (code fuse.Status) {
	defer fs.m.done(opFsync, time.Now(), &code)
	return fs.flushHandle(in.Fh, "fsync")
}

// flushAll flushes every open file (Unmount, FS.Flush).
// flushAll flushes every open file before an unmount. Unlinked files are
// skipped: once unmounted, nothing can read them.
func (fs *fileSystem) flushAll(ctx context.Context) error {
	fs.mu.RLock()
	var dead []*openFile
	for _, f := range fs.files {
		if f.unlinked {
			dead = append(dead, f)
		}
	}
	fs.mu.RUnlock()
	for _, f := range dead {
		f.mu.Lock()
		fs.dropDirty(f)
		f.mu.Unlock()
	}
	return fs.flushAllExcept(ctx, nil)
}

func (fs *fileSystem) flushAllExcept(ctx context.Context, skip *openFile) error {
	fs.mu.RLock()
	files := slices.Collect(maps.Values(fs.files))
	fs.mu.RUnlock()
	var errs []error
	for _, f := range files {
		if f == skip {
			continue
		}
		f.mu.Lock()
		err := fs.flushLocked(ctx, f)
		f.mu.Unlock()
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (fs *fileSystem) Lseek(cancel <-chan struct{}, in *fuse.LseekIn, out *fuse.LseekOut) (code fuse.Status) {
	defer fs.m.done(opLseek, time.Now(), &code)
	h := fs.handle(in.Fh)
	if h == nil {
		return fuse.EBADF
	}
	h.file.mu.RLock()
	size := h.file.size
	h.file.mu.RUnlock()
	// Data is reported everywhere below the size (holes are not tracked
	// for lseek); the only hole is the virtual one at EOF.
	switch in.Whence {
	case unix.SEEK_DATA:
		if in.Offset >= size {
			return fuse.Status(syscall.ENXIO)
		}
		out.Offset = in.Offset
	case unix.SEEK_HOLE:
		if in.Offset > size {
			return fuse.Status(syscall.ENXIO)
		}
		out.Offset = size
	default:
		return fuse.EINVAL
	}
	return fuse.OK
}

func (fs *fileSystem) Fallocate(cancel <-chan struct{}, in *fuse.FallocateIn) (code fuse.Status) {
	defer fs.m.done(opFallocate, time.Now(), &code)
	h := fs.handle(in.Fh)
	if h == nil {
		return fuse.EBADF
	}
	if in.Length == 0 {
		return fuse.EINVAL
	}
	end := in.Offset + in.Length
	if end < in.Offset || end > 1<<63-1 {
		return fuse.Status(syscall.EFBIG)
	}
	switch in.Mode {
	case 0:
		// Extend the size without writing: the new range is a hole that
		// reads as zeros. Nothing is reserved (the store has no quota).
		_, st := fs.setAttr(h.file.ino, meta.SetAttrRequest{Valid: meta.SetSize, Size: end, Now: now()}, true)
		return st
	case unix.FALLOC_FL_KEEP_SIZE:
		return fuse.OK
	default:
		return fuse.Status(syscall.EOPNOTSUPP)
	}
}
