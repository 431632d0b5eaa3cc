package fs

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/datenlord/datenlord-go/meta"
)

// fileSystem implements the raw FUSE protocol over meta, cache and store.
// FUSE node ids are meta inode numbers (node id 1 is meta.RootIno), so no
// node table is kept and Forget has nothing to do.
type fileSystem struct {
	fuse.RawFileSystem // ENOSYS for what is not implemented below

	cfg       Config
	md        Metadata
	cache     PageCache
	store     BlockWriter
	log       *slog.Logger
	m         *metrics
	blockSize uint64
	pageSize  uint64
	ids       *idAllocator
	budget    *dirtyBudget
	pages     sync.Pool // *[]byte of pageSize, for partial page reads
	raSem     chan struct{}
	upSem     chan struct{}  // bounds write-behind uploads on the node
	purges    sync.WaitGroup // background orphan purges

	mu     sync.RWMutex
	files  map[meta.Ino]*openFile // open regular files, refcounted
	fhs    map[uint64]*handle
	dirs   map[uint64]*dirHandle
	nextFh uint64
	server *fuse.Server
}

var _ fuse.RawFileSystem = (*fileSystem)(nil)

func newFileSystem(cfg Config, md Metadata, c PageCache, st BlockWriter) *fileSystem {
	fs := &fileSystem{
		RawFileSystem: fuse.NewDefaultRawFileSystem(),
		cfg:           cfg,
		md:            md,
		cache:         c,
		store:         st,
		log:           cfg.Logger,
		m:             newMetrics(cfg.Registerer),
		blockSize:     uint64(cfg.BlockSize),
		pageSize:      uint64(c.PageSize()),
		ids:           newIDAllocator(md),
		budget:        newDirtyBudget(cfg.DirtyLimit),
		raSem:         make(chan struct{}, readaheadParallel),
		upSem:         make(chan struct{}, writeBehindParallel),
		files:         make(map[meta.Ino]*openFile),
		fhs:           make(map[uint64]*handle),
		dirs:          make(map[uint64]*dirHandle),
	}
	ps := c.PageSize()
	fs.pages.New = func() any { b := make([]byte, ps); return &b }
	return fs
}

// ctx is the context of FUSE requests. Requests are not cancelled midway:
// a flush that stops halfway would leave the file dirty anyway.
func (fs *fileSystem) ctx() context.Context { return context.Background() }

func now() int64 { return time.Now().UnixNano() }

func (fs *fileSystem) String() string { return "datenlord" }

func (fs *fileSystem) SetDebug(bool) {}

func (fs *fileSystem) Init(s *fuse.Server) {
	fs.mu.Lock()
	fs.server = s
	fs.mu.Unlock()
}

// fillAttr converts meta attributes to FUSE attributes.
func (fs *fileSystem) fillAttr(a *meta.Attr, out *fuse.Attr) {
	out.Ino = uint64(a.Ino)
	out.Size = a.Size
	out.Blocks = (a.Size + 511) / 512
	out.Atime, out.Atimensec = uint64(a.Atime/1e9), uint32(a.Atime%1e9)
	out.Mtime, out.Mtimensec = uint64(a.Mtime/1e9), uint32(a.Mtime%1e9)
	out.Ctime, out.Ctimensec = uint64(a.Ctime/1e9), uint32(a.Ctime%1e9)
	out.Mode = a.Mode
	out.Nlink = a.Nlink
	out.Uid = a.Uid
	out.Gid = a.Gid
	out.Rdev = a.Rdev
	out.Blksize = uint32(min(fs.blockSize, 1<<20))
}

func (fs *fileSystem) fillEntry(a *meta.Attr, out *fuse.EntryOut) {
	fs.overlay(a)
	out.NodeId = uint64(a.Ino)
	out.Generation = 1
	fs.fillAttr(a, &out.Attr)
	out.SetEntryTimeout(fs.cfg.EntryTimeout)
	out.SetAttrTimeout(fs.cfg.AttrTimeout)
}

func (fs *fileSystem) fillAttrOut(a *meta.Attr, out *fuse.AttrOut) {
	fs.overlay(a)
	fs.fillAttr(a, &out.Attr)
	out.SetTimeout(fs.cfg.AttrTimeout)
}

// overlay replaces size and mtime with this node's unflushed view of an
// open file.
func (fs *fileSystem) overlay(a *meta.Attr) {
	if !a.IsRegular() {
		return
	}
	fs.mu.RLock()
	f := fs.files[a.Ino]
	fs.mu.RUnlock()
	if f == nil {
		return
	}
	f.mu.RLock()
	if len(f.dirty) > 0 {
		a.Size = f.size
		a.Mtime = f.mtime
	}
	f.mu.RUnlock()
}

func (fs *fileSystem) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) (code fuse.Status) {
	defer fs.m.done(opLookup, time.Now(), &code)
	if st := checkName(name); !st.Ok() {
		return st
	}
	a, err := fs.md.Lookup(fs.ctx(), meta.Ino(h.NodeId), name)
	if err != nil {
		return fs.toStatus("lookup", err)
	}
	fs.fillEntry(&a, out)
	return fuse.OK
}

func (fs *fileSystem) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) (code fuse.Status) {
	defer fs.m.done(opGetAttr, time.Now(), &code)
	a, err := fs.md.GetAttr(fs.ctx(), meta.Ino(in.NodeId))
	if err != nil {
		return fs.toStatus("getattr", err)
	}
	fs.fillAttrOut(&a, out)
	return fuse.OK
}

func (fs *fileSystem) SetAttr(cancel <-chan struct{}, in *fuse.SetAttrIn, out *fuse.AttrOut) (code fuse.Status) {
	defer fs.m.done(opSetAttr, time.Now(), &code)
	t := now()
	req := meta.SetAttrRequest{Now: t}
	if mode, ok := in.GetMode(); ok {
		req.Valid |= meta.SetMode
		req.Mode = mode
	}
	if uid, ok := in.GetUID(); ok {
		req.Valid |= meta.SetUid
		req.Uid = uid
	}
	if gid, ok := in.GetGID(); ok {
		req.Valid |= meta.SetGid
		req.Gid = gid
	}
	if in.Valid&fuse.FATTR_ATIME != 0 {
		req.Valid |= meta.SetAtime
		req.Atime = int64(in.Atime)*1e9 + int64(in.Atimensec)
		if in.Valid&fuse.FATTR_ATIME_NOW != 0 {
			req.Atime = t
		}
	}
	if in.Valid&fuse.FATTR_MTIME != 0 {
		req.Valid |= meta.SetMtime
		req.Mtime = int64(in.Mtime)*1e9 + int64(in.Mtimensec)
		if in.Valid&fuse.FATTR_MTIME_NOW != 0 {
			req.Mtime = t
		}
	}
	if size, ok := in.GetSize(); ok {
		req.Valid |= meta.SetSize
		req.Size = size
	}
	a, st := fs.setAttr(meta.Ino(in.NodeId), req, false)
	if !st.Ok() {
		return st
	}
	fs.fillAttrOut(&a, out)
	return fuse.OK
}

// setAttr applies req, going through the open-file state when the file is
// open on this node: a size change first flushes the dirty blocks, then
// truncates in meta and reloads the block map. With growOnly (fallocate)
// a size that is not larger than the current one is left alone.
func (fs *fileSystem) setAttr(ino meta.Ino, req meta.SetAttrRequest, growOnly bool) (meta.Attr, fuse.Status) {
	ctx := fs.ctx()
	f := fs.acquireExisting(ino)
	if f == nil {
		a, err := fs.md.SetAttr(ctx, ino, req)
		return a, fs.toStatus("setattr", err)
	}
	defer fs.unref(f)
	f.mu.Lock()
	defer f.mu.Unlock()
	if growOnly && req.Size <= f.size {
		return meta.Attr{}, fuse.OK
	}
	if req.Valid&meta.SetSize != 0 {
		if err := fs.flushLocked(ctx, f); err != nil {
			return meta.Attr{}, fs.flushStatus("truncate", err)
		}
	}
	a, err := fs.md.SetAttr(ctx, ino, req)
	if err != nil {
		return meta.Attr{}, fs.toStatus("setattr", err)
	}
	if req.Valid&meta.SetSize != 0 {
		if err := fs.loadBlocks(ctx, f); err != nil {
			return meta.Attr{}, fs.toStatus("setattr", err)
		}
		f.size = a.Size
	}
	if len(f.dirty) == 0 || req.Valid&meta.SetMtime != 0 {
		f.mtime = a.Mtime
	}
	return a, fuse.OK
}

func (fs *fileSystem) create(h *fuse.InHeader, name string, mode, rdev uint32, target string) (meta.Attr, fuse.Status) {
	if st := checkName(name); !st.Ok() {
		return meta.Attr{}, st
	}
	a, err := fs.md.Create(fs.ctx(), meta.CreateRequest{
		Parent: meta.Ino(h.NodeId),
		Name:   name,
		Mode:   mode,
		Rdev:   rdev,
		Uid:    h.Uid,
		Gid:    h.Gid,
		Target: target,
		Now:    now(),
	})
	if err != nil {
		return meta.Attr{}, fs.toStatus("create", err)
	}
	return a, fuse.OK
}

func (fs *fileSystem) Mknod(cancel <-chan struct{}, in *fuse.MknodIn, name string, out *fuse.EntryOut) (code fuse.Status) {
	defer fs.m.done(opMknod, time.Now(), &code)
	mode := in.Mode
	switch mode & syscall.S_IFMT {
	case 0:
		mode |= syscall.S_IFREG
	case syscall.S_IFREG, syscall.S_IFIFO, syscall.S_IFSOCK, syscall.S_IFCHR, syscall.S_IFBLK:
	default:
		return fuse.EINVAL
	}
	a, st := fs.create(&in.InHeader, name, mode, in.Rdev, "")
	if !st.Ok() {
		return st
	}
	fs.fillEntry(&a, out)
	return fuse.OK
}

func (fs *fileSystem) Mkdir(cancel <-chan struct{}, in *fuse.MkdirIn, name string, out *fuse.EntryOut) (code fuse.Status) {
	defer fs.m.done(opMkdir, time.Now(), &code)
	a, st := fs.create(&in.InHeader, name, in.Mode&07777|syscall.S_IFDIR, 0, "")
	if !st.Ok() {
		return st
	}
	fs.fillEntry(&a, out)
	return fuse.OK
}

func (fs *fileSystem) Symlink(cancel <-chan struct{}, h *fuse.InHeader, target string, name string, out *fuse.EntryOut) (code fuse.Status) {
	defer fs.m.done(opSymlink, time.Now(), &code)
	if len(target) > meta.MaxSymlinkLen {
		return fuse.Status(syscall.ENAMETOOLONG)
	}
	a, st := fs.create(h, name, syscall.S_IFLNK|0o777, 0, target)
	if !st.Ok() {
		return st
	}
	fs.fillEntry(&a, out)
	return fuse.OK
}

func (fs *fileSystem) Readlink(cancel <-chan struct{}, h *fuse.InHeader) (out []byte, code fuse.Status) {
	defer fs.m.done(opReadlink, time.Now(), &code)
	target, err := fs.md.Readlink(fs.ctx(), meta.Ino(h.NodeId))
	if err != nil {
		return nil, fs.toStatus("readlink", err)
	}
	return []byte(target), fuse.OK
}

func (fs *fileSystem) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) (code fuse.Status) {
	defer fs.m.done(opLink, time.Now(), &code)
	if st := checkName(name); !st.Ok() {
		return st
	}
	a, err := fs.md.Link(fs.ctx(), meta.Ino(in.Oldnodeid), meta.Ino(in.NodeId), name, now())
	if err != nil {
		return fs.toStatus("link", err)
	}
	// An O_TMPFILE file that linkat just named is an ordinary file again:
	// its unflushed writes must reach the store on close.
	fs.mu.Lock()
	if f := fs.files[a.Ino]; f != nil {
		f.unlinked = false
	}
	fs.mu.Unlock()
	fs.fillEntry(&a, out)
	return fuse.OK
}

func (fs *fileSystem) Unlink(cancel <-chan struct{}, h *fuse.InHeader, name string) (code fuse.Status) {
	defer fs.m.done(opUnlink, time.Now(), &code)
	if st := checkName(name); !st.Ok() {
		return st
	}
	a, err := fs.md.Unlink(fs.ctx(), meta.Ino(h.NodeId), name, now())
	if err != nil {
		return fs.toStatus("unlink", err)
	}
	if a.Nlink == 0 {
		fs.orphaned(a.Ino)
	}
	return fuse.OK
}

func (fs *fileSystem) Rmdir(cancel <-chan struct{}, h *fuse.InHeader, name string) (code fuse.Status) {
	defer fs.m.done(opRmdir, time.Now(), &code)
	if st := checkName(name); !st.Ok() {
		return st
	}
	a, err := fs.md.Rmdir(fs.ctx(), meta.Ino(h.NodeId), name, now())
	if err != nil {
		return fs.toStatus("rmdir", err)
	}
	fs.orphaned(a.Ino)
	return fuse.OK
}

// renameWhiteout is RENAME_WHITEOUT, which only overlay file systems use.
const renameWhiteout = 1 << 2

func (fs *fileSystem) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName string, newName string) (code fuse.Status) {
	defer fs.m.done(opRename, time.Now(), &code)
	if st := checkName(oldName); !st.Ok() {
		return st
	}
	if st := checkName(newName); !st.Ok() {
		return st
	}
	flags := meta.RenameFlags(in.Flags)
	if in.Flags&renameWhiteout != 0 || flags&^(meta.RenameNoReplace|meta.RenameExchange) != 0 ||
		flags == meta.RenameNoReplace|meta.RenameExchange {
		return fuse.EINVAL
	}
	ctx := fs.ctx()
	res, err := fs.md.Rename(ctx, meta.Ino(in.NodeId), oldName, meta.Ino(in.Newdir), newName, flags, now())
	if errors.Is(err, syscall.EEXIST) && flags == 0 {
		// rename(2) of a non-directory over a directory is EISDIR.
		src, serr := fs.md.Lookup(ctx, meta.Ino(in.NodeId), oldName)
		dst, derr := fs.md.Lookup(ctx, meta.Ino(in.Newdir), newName)
		if serr == nil && derr == nil && !src.IsDir() && dst.IsDir() {
			return fuse.EISDIR
		}
	}
	if err != nil {
		return fs.toStatus("rename", err)
	}
	if res.Replaced != 0 && res.ReplacedAttr.Nlink == 0 {
		fs.orphaned(res.Replaced)
	}
	return fuse.OK
}

// orphaned handles an inode whose last link is gone: it is purged now,
// or on the last release when it is open on this node.
func (fs *fileSystem) orphaned(ino meta.Ino) {
	f, _ := fs.acquire(ino)
	fs.mu.Lock()
	f.unlinked = true
	fs.mu.Unlock()
	fs.unref(f)
}

// purge deletes an orphan in the background. In a cluster a purge first
// asks every node whether it has the inode open, which must not hold up
// the unlink or close that made the orphan (a partitioned member would
// stall it for seconds).
//
// The purge holds the inode's open-file state locked, so an open of the
// same inode that races with it either comes first (the purge sees a
// second reference and leaves the orphan to that handle's last release)
// or waits and then finds the inode gone, instead of opening an inode
// that is being purged. A purge that fails leaves the orphan listed for
// the garbage collector or the next mount.
func (fs *fileSystem) purge(ino meta.Ino) {
	fs.purges.Go(func() {
		f, _ := fs.acquire(ino)
		f.mu.Lock()
		fs.mu.Lock()
		alone := f.refs == 1
		if !alone {
			f.unlinked = true // the other handle's last release purges
		}
		fs.mu.Unlock()
		var err error
		if alone {
			err = fs.md.Purge(fs.ctx(), ino)
		}
		f.mu.Unlock()
		fs.mu.Lock()
		f.refs--
		if f.refs == 0 && fs.files[ino] == f {
			delete(fs.files, ino)
		}
		fs.mu.Unlock()
		if err != nil && !errors.Is(err, syscall.ENOENT) {
			fs.log.Warn("fs: purge orphan; left for the garbage collector", "ino", ino, "err", err)
		}
	})
}

func (fs *fileSystem) Access(cancel <-chan struct{}, in *fuse.AccessIn) (code fuse.Status) {
	defer fs.m.done(opAccess, time.Now(), &code)
	// default_permissions: the kernel checks the mode bits itself.
	_, err := fs.md.GetAttr(fs.ctx(), meta.Ino(in.NodeId))
	return fs.toStatus("access", err)
}

func (fs *fileSystem) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (sz uint32, code fuse.Status) {
	defer fs.m.done(opGetXAttr, time.Now(), &code)
	if len(attr) > 255 {
		return 0, fuse.ERANGE
	}
	v, err := fs.md.GetXattr(fs.ctx(), meta.Ino(h.NodeId), attr)
	if err != nil {
		return 0, fs.toStatus("getxattr", err)
	}
	if len(dest) < len(v) {
		// With len(dest) == 0 (a size probe) go-fuse turns this into OK.
		return uint32(len(v)), fuse.ERANGE
	}
	return uint32(copy(dest, v)), fuse.OK
}

func (fs *fileSystem) ListXAttr(cancel <-chan struct{}, h *fuse.InHeader, dest []byte) (sz uint32, code fuse.Status) {
	defer fs.m.done(opListXAttr, time.Now(), &code)
	names, err := fs.md.ListXattr(fs.ctx(), meta.Ino(h.NodeId))
	if err != nil {
		return 0, fs.toStatus("listxattr", err)
	}
	var b strings.Builder
	for _, n := range names {
		b.WriteString(n)
		b.WriteByte(0)
	}
	if len(dest) < b.Len() {
		return uint32(b.Len()), fuse.ERANGE
	}
	return uint32(copy(dest, b.String())), fuse.OK
}

func (fs *fileSystem) SetXAttr(cancel <-chan struct{}, in *fuse.SetXAttrIn, attr string, data []byte) (code fuse.Status) {
	defer fs.m.done(opSetXAttr, time.Now(), &code)
	if len(attr) > 255 || attr == "" {
		return fuse.ERANGE
	}
	if len(data) > meta.MaxXattrSize {
		return fuse.Status(syscall.E2BIG)
	}
	flags := meta.XattrFlags(in.Flags)
	if flags&^(meta.XattrCreate|meta.XattrReplace) != 0 {
		return fuse.EINVAL
	}
	err := fs.md.SetXattr(fs.ctx(), meta.Ino(in.NodeId), attr, data, flags, now())
	return fs.toStatus("setxattr", err)
}

func (fs *fileSystem) RemoveXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string) (code fuse.Status) {
	defer fs.m.done(opRemoveXAttr, time.Now(), &code)
	return fs.toStatus("removexattr", fs.md.RemoveXattr(fs.ctx(), meta.Ino(h.NodeId), attr, now()))
}

// Capacity that statfs reports: the persistence layer (a directory or S3)
// has no fixed size, so a large total is reported and used bytes come
// from the namespace.
const (
	statfsBlockSize   = 4096
	statfsTotalBytes  = 1 << 50 // 1 PiB
	statfsTotalInodes = 1 << 40
)

func (fs *fileSystem) StatFs(cancel <-chan struct{}, h *fuse.InHeader, out *fuse.StatfsOut) (code fuse.Status) {
	defer fs.m.done(opStatFs, time.Now(), &code)
	s, err := fs.md.StatFS(fs.ctx())
	if err != nil {
		return fs.toStatus("statfs", err)
	}
	total := uint64(statfsTotalBytes / statfsBlockSize)
	used := min((s.UsedBytes+statfsBlockSize-1)/statfsBlockSize, total)
	out.Bsize = statfsBlockSize
	out.Frsize = statfsBlockSize
	out.Blocks = total
	out.Bfree = total - used
	out.Bavail = total - used
	out.Files = statfsTotalInodes
	out.Ffree = statfsTotalInodes - min(s.Inodes, statfsTotalInodes)
	out.NameLen = meta.MaxNameLen
	return fuse.OK
}
