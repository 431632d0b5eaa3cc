package fs

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/meta"
)

// objectMetadata is the part of the metadata service that publishes whole
// files in one command; *meta.Service has it.
type objectMetadata interface {
	PutObject(ctx context.Context, req meta.PutObjectRequest) (meta.PutObjectResult, error)
}

// errNoPutObject is returned when the metadata service cannot publish
// objects in one command.
var errNoPutObject = fmt.Errorf("metadata service without PutObject: %w", syscall.ENOTSUP)

// ObjectWriter writes the content of a new object, which Commit then
// creates and links under its name in one metadata command
// (meta.Service.PutObject): no inode exists until the commit, so nothing
// is left to clean up in the namespace when a writer is abandoned.
//
// Every block that Write fills is sent to the store at once (write-behind,
// in parallel with receiving the rest); the block ids are in flight for
// the garbage collector until the commit names them. Memory is bounded by
// the node's dirty budget: a block's buffer is held from its first byte
// until its upload ends. Commit sends the last, partial block, waits for
// every upload and then commits: the object is durable (blocks in the
// store, metadata committed) when Commit returns. The blocks also go to
// the page cache, so a read of a just-written object is served from
// memory.
//
// An ObjectWriter is used by one goroutine at a time.
type ObjectWriter struct {
	x    *Files
	bs   uint64
	hint int64 // the expected size (-1: unknown)

	buf  []byte // the block being filled; len is its bytes so far
	held int64  // dirty budget held for buf
	size uint64
	// blocks are the uploads of the blocks so far, in file order.
	blocks  []*objectBlock
	flushed bool  // the last block is sent: no more writes
	sealed  bool  // every block is uploaded: only the command is left
	err     error // a failed upload: the writer can only be aborted
	ended   bool  // committed or aborted
}

// objectBlock is the upload of one block of an ObjectWriter.
type objectBlock struct {
	id   meta.BlockID
	n    uint32
	done chan struct{}
	err  error // valid after done
}

// NewObject starts writing a new object of about size bytes (-1:
// unknown; the size only sizes buffers).
func (x *Files) NewObject(size int64) *ObjectWriter {
	return &ObjectWriter{x: x, bs: x.fs.blockSize, hint: size}
}

// Size returns the bytes written so far.
func (w *ObjectWriter) Size() uint64 { return w.size }

// Write appends p; full blocks are sent to the store in the background.
func (w *ObjectWriter) Write(ctx context.Context, p []byte) (int, error) {
	if w.ended || w.flushed {
		return 0, fmt.Errorf("write object: %w", syscall.EBADF)
	}
	if w.err != nil {
		return 0, w.err
	}
	n := 0
	for len(p) > 0 {
		if err := w.grow(ctx, len(p)); err != nil {
			return n, err
		}
		c := min(len(p), int(w.bs)-len(w.buf))
		w.buf = append(w.buf, p[:c]...)
		w.size += uint64(c)
		n += c
		p = p[c:]
		if uint64(len(w.buf)) == w.bs {
			if err := w.send(ctx, sendBehind); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// grow makes room in buf for the next min(want, rest of the block) bytes,
// taking dirty budget for what it allocates.
func (w *ObjectWriter) grow(ctx context.Context, want int) error {
	need := min(len(w.buf)+want, int(w.bs))
	if need <= cap(w.buf) {
		return nil
	}
	size := int(w.bs)
	if w.buf == nil && w.hint >= 0 {
		// Size a small object's only block by what is expected; a longer
		// body grows it to a whole block.
		if rest := w.hint - int64(w.size); rest >= int64(need) && rest < int64(w.bs) {
			size = int(rest)
		}
	}
	size = max(size, need)
	if err := w.reserve(ctx, int64(size)-w.held); err != nil {
		return err
	}
	w.held = int64(size)
	nb := make([]byte, len(w.buf), size)
	copy(nb, w.buf)
	w.buf = nb
	return nil
}

// reserve takes n bytes of the node's dirty budget. Over budget it waits
// for this writer's oldest upload, or flushes the node's dirty files.
func (w *ObjectWriter) reserve(ctx context.Context, n int64) error {
	fs := w.x.fs
	waited := 0
	for attempt := 0; !fs.budget.tryAcquire(n); attempt++ {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("write object: %w", err)
		}
		if waited < len(w.blocks) {
			<-w.blocks[waited].done
			waited++
			continue
		}
		if err := fs.flushAllExcept(ctx, nil); err != nil {
			return fmt.Errorf("write object: make room: %w", err)
		}
		if attempt > 2 {
			time.Sleep(time.Millisecond * time.Duration(min(attempt, 50)))
		}
	}
	return nil
}

// How send uploads a block.
const (
	// sendBehind uploads in the background, within the node's bound of
	// write-behind uploads (a full block of a body still arriving).
	sendBehind = iota
	// sendNow uploads in the background at once: the last block, which
	// the commit waits for.
	sendNow
	// sendInline uploads in the calling goroutine.
	sendInline
)

// send uploads buf as the next block (how: sendBehind, sendNow or
// sendInline). The budget of buf is released when the upload ends.
func (w *ObjectWriter) send(ctx context.Context, how int) error {
	fs := w.x.fs
	ids, err := fs.ids.alloc(ctx, 1)
	if err != nil {
		w.err = fmt.Errorf("write object: %w", err)
		return w.err
	}
	b := &objectBlock{id: ids[0], n: uint32(len(w.buf)), done: make(chan struct{})}
	w.blocks = append(w.blocks, b)
	data, held := w.buf, w.held
	w.buf, w.held = nil, 0
	bctx := context.WithoutCancel(ctx)
	put := func() {
		defer close(b.done)
		defer fs.budget.release(held)
		if err := fs.store.Put(bctx, uint64(b.id), data); err != nil {
			b.err = &putError{fmt.Errorf("write object: put block %d: %w", b.id, err)}
			return
		}
		fs.cache.PutBlock(bctx, uint64(b.id), data, cache.AccessRandom)
	}
	switch how {
	case sendInline:
		put()
	case sendNow:
		go put()
	default:
		go func() {
			fs.upSem <- struct{}{}
			defer func() { <-fs.upSem }()
			put()
		}()
	}
	return nil
}

// Flush ends the writes: it starts the upload of the last, partial block
// in the background, so that the caller can prepare the commit meanwhile
// (Commit waits for it). Writes after Flush fail with EBADF.
func (w *ObjectWriter) Flush(ctx context.Context) {
	if w.flushed || w.ended {
		return
	}
	w.flushed = true
	if w.err == nil && len(w.buf) > 0 {
		_ = w.send(ctx, sendNow)
	}
}

// seal sends the last block and waits for every upload.
func (w *ObjectWriter) seal(ctx context.Context) error {
	if w.sealed {
		return nil
	}
	if !w.flushed {
		w.flushed = true
		if w.err == nil && len(w.buf) > 0 {
			_ = w.send(ctx, sendInline)
		}
	}
	for _, b := range w.blocks {
		select {
		case <-b.done:
		case <-ctx.Done():
			return fmt.Errorf("write object: %w", ctx.Err())
		}
		if b.err != nil && w.err == nil {
			w.err = b.err
		}
	}
	if w.err != nil {
		return w.err
	}
	w.sealed = true
	return nil
}

// ObjectOptions are the attributes of a committed object.
type ObjectOptions struct {
	// Mode holds the permission bits.
	Mode uint32
	// Xattrs are set on the new file.
	Xattrs map[string][]byte
	// NoReplace fails with EEXIST if the name exists.
	NoReplace bool
}

// Commit makes the object durable and links it as name in parent,
// replacing a regular file there (EISDIR for a directory), and returns its
// attributes. A failed Commit may be retried (e.g. after creating a
// missing parent) or the writer aborted.
func (w *ObjectWriter) Commit(ctx context.Context, parent meta.Ino, name string, opt ObjectOptions) (meta.Attr, error) {
	if w.ended {
		return meta.Attr{}, fmt.Errorf("commit object %q: %w", name, syscall.EBADF)
	}
	if err := nameErr(name); err != nil {
		return meta.Attr{}, err
	}
	pm := w.x.put
	if pm == nil {
		return meta.Attr{}, errNoPutObject
	}
	if err := w.seal(ctx); err != nil {
		return meta.Attr{}, err
	}
	bm := make(map[uint64]meta.BlockRef, len(w.blocks))
	for i, b := range w.blocks {
		bm[uint64(i)] = meta.BlockRef{ID: b.id, Len: b.n}
	}
	t := now()
	res, err := pm.PutObject(ctx, meta.PutObjectRequest{
		Parent: parent, Name: name, Mode: opt.Mode & 07777, Blocks: bm, Size: w.size,
		Mtime: t, Now: t, BlockSize: uint32(w.bs), Xattrs: opt.Xattrs, NoReplace: opt.NoReplace,
	})
	if err != nil {
		return meta.Attr{}, fmt.Errorf("commit object %q in %d: %w", name, parent, err)
	}
	w.ended = true
	w.x.fs.ids.done(w.ids())
	w.x.published(parent, name, res, nil)
	return res.Attr, nil
}

func (w *ObjectWriter) ids() []meta.BlockID {
	ids := make([]meta.BlockID, len(w.blocks))
	for i, b := range w.blocks {
		ids[i] = b.id
	}
	return ids
}

// Abort drops the object: its uploads are awaited and their blocks
// deleted in the background (a block left behind is found by the garbage
// collector's store sweep). It does nothing after Commit succeeded.
func (w *ObjectWriter) Abort() {
	if w.ended {
		return
	}
	w.ended = true
	fs := w.x.fs
	fs.budget.release(w.held)
	w.buf, w.held = nil, 0
	blocks := w.blocks
	if len(blocks) == 0 {
		return
	}
	go func() {
		ctx := fs.ctx()
		for _, b := range blocks {
			<-b.done
			if b.err == nil {
				if err := fs.store.Delete(ctx, uint64(b.id)); err != nil {
					fs.log.Debug("fs: delete the block of an aborted object", "block", b.id, "err", err)
				}
			}
			fs.ids.done([]meta.BlockID{b.id})
		}
	}()
}

// published updates this node's state after a PutObject: the replaced
// inode is purged once nothing here has it open, and the kernel forgets
// the entry and the inodes that changed (moved parts included).
func (x *Files) published(parent meta.Ino, name string, res meta.PutObjectResult, parts []meta.ObjectPart) {
	if res.Replaced != 0 && res.ReplacedAttr.Nlink == 0 {
		x.fs.orphaned(res.Replaced)
	}
	changes := []meta.Change{
		{Kind: meta.ChangeEntry, Parent: parent, Name: name, Ino: res.Attr.Ino},
		{Kind: meta.ChangeInode, Ino: parent},
	}
	if res.Replaced != 0 {
		changes = append(changes, meta.Change{Kind: meta.ChangeInode, Ino: res.Replaced})
	}
	for _, p := range parts {
		changes = append(changes, meta.Change{Kind: meta.ChangeInode, Ino: p.Ino})
	}
	x.notify(changes...)
}

// Assemble creates the file name in parent from the content of parts,
// in order, by moving their blocks (no data is copied): every part but the
// last must be a multiple of the block size long (EINVAL otherwise), and
// none may have changed since the caller read its Version (ESTALE). The
// parts are left empty (size 0), to be unlinked; their blocks never become
// garbage. size is the sum of the part sizes.
func (x *Files) Assemble(ctx context.Context, parts []meta.ObjectPart, size uint64, parent meta.Ino, name string, opt ObjectOptions) (meta.Attr, error) {
	if err := nameErr(name); err != nil {
		return meta.Attr{}, err
	}
	if x.put == nil {
		return meta.Attr{}, errNoPutObject
	}
	// Parts written here and still open hold their content in memory
	// until flushed: the move must see it committed.
	for _, p := range parts {
		if f := x.fs.acquireExisting(p.Ino); f != nil {
			f.mu.Lock()
			err := x.fs.flushLocked(ctx, f)
			f.mu.Unlock()
			x.fs.unref(f)
			if err != nil {
				return meta.Attr{}, fmt.Errorf("assemble %q: flush part %d: %w", name, p.Ino, err)
			}
		}
	}
	t := now()
	res, err := x.put.PutObject(ctx, meta.PutObjectRequest{
		Parent: parent, Name: name, Mode: opt.Mode & 07777, Parts: parts, Size: size,
		Mtime: t, Now: t, BlockSize: uint32(x.fs.blockSize), Xattrs: opt.Xattrs, NoReplace: opt.NoReplace,
	})
	if err != nil {
		return meta.Attr{}, fmt.Errorf("assemble %q in %d: %w", name, parent, err)
	}
	x.published(parent, name, res, parts)
	return res.Attr, nil
}
