package meta

import (
	"bytes"
	"encoding/binary"
	"errors"
	"sort"
	"strings"
	"syscall"

	"github.com/dgraph-io/badger/v4"
)

// maxLinks caps the link count of a file (EMLINK beyond it).
const maxLinks = 1 << 16

// write is one pending key change of a command.
type write struct {
	val []byte
	del bool
}

// inodeEntry is an inode loaded by a command; changes are written back
// when the command succeeds, so a command that touches the same inode
// twice (rename within one directory) composes its changes.
type inodeEntry struct {
	attr    Attr
	target  string
	dirty   bool
	deleted bool
}

// applyCtx is the state of one command being applied. Point reads see the
// command's own pending writes; prefix scans see only what earlier
// commands wrote, so handlers scan a range before they write into it.
type applyCtx struct {
	*batch
	index  uint64
	cnt    counters
	writes map[string]write
	inodes map[Ino]*inodeEntry
}

func (a *applyCtx) set(k, v []byte) { a.writes[string(k)] = write{val: v} }
func (a *applyCtx) del(k []byte)    { a.writes[string(k)] = write{del: true} }

// get returns the value of key k, nil and no error if absent.
func (a *applyCtx) get(k []byte) ([]byte, bool, error) {
	if w, ok := a.writes[string(k)]; ok {
		return w.val, !w.del, nil
	}
	item, err := a.txn.Get(k)
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	v, err := item.ValueCopy(nil)
	return v, err == nil, err
}

// inode loads an inode; errno ENOENT if it does not exist.
func (a *applyCtx) inode(ino Ino) (*inodeEntry, error) {
	if e, ok := a.inodes[ino]; ok {
		if e.deleted {
			return nil, syscall.ENOENT
		}
		return e, nil
	}
	v, ok, err := a.get(inodeKey(ino))
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, syscall.ENOENT
	}
	attr, target, err := decodeInode(ino, v)
	if err != nil {
		return nil, err
	}
	e := &inodeEntry{attr: attr, target: target}
	a.inodes[ino] = e
	return e, nil
}

// dir loads a directory inode: ENOENT, or ENOTDIR if it is not one.
func (a *applyCtx) dir(ino Ino) (*inodeEntry, error) {
	e, err := a.inode(ino)
	if err != nil {
		return nil, err
	}
	if !e.attr.IsDir() {
		return nil, syscall.ENOTDIR
	}
	return e, nil
}

// liveDir is dir for a directory that gains an entry: a removed directory
// (an orphan, still open somewhere) takes no new entries.
func (a *applyCtx) liveDir(ino Ino) (*inodeEntry, error) {
	e, err := a.dir(ino)
	if err != nil {
		return nil, err
	}
	if e.attr.Nlink == 0 {
		return nil, syscall.ENOENT
	}
	return e, nil
}

func (a *applyCtx) flushInodes() error {
	for ino, e := range a.inodes {
		switch {
		case e.deleted:
			a.del(inodeKey(ino))
		case e.dirty:
			a.set(inodeKey(ino), encodeInode(&e.attr, e.target))
		}
	}
	return nil
}

// dentry looks up a name; ok is false if absent.
func (a *applyCtx) dentry(parent Ino, name string) (ino Ino, mode uint32, ok bool, err error) {
	v, ok, err := a.get(dentryKey(parent, name))
	if err != nil || !ok {
		return 0, 0, false, err
	}
	ino, mode, err = decodeDentry(v)
	return ino, mode, err == nil, err
}

// scan calls fn for every key with prefix p as of the start of the command.
func (a *applyCtx) scan(p []byte, values bool, fn func(k, v []byte) error) error {
	opts := badger.DefaultIteratorOptions
	opts.PrefetchValues = values
	opts.Prefix = p
	it := a.txn.NewIterator(opts)
	defer it.Close()
	for it.Seek(p); it.Valid(); it.Next() {
		item := it.Item()
		var v []byte
		if values {
			var err error
			if v, err = item.ValueCopy(nil); err != nil {
				return err
			}
		}
		if err := fn(item.KeyCopy(nil), v); err != nil {
			return err
		}
	}
	return nil
}

// isEmptyDir reports whether a directory has no entries.
func (a *applyCtx) isEmptyDir(ino Ino) (bool, error) {
	empty := true
	errStop := errors.New("stop")
	err := a.scan(dentryPrefix(ino), false, func(k, _ []byte) error {
		if w, ok := a.writes[string(k)]; ok && w.del {
			return nil
		}
		empty = false
		return errStop
	})
	if err != nil && !errors.Is(err, errStop) {
		return false, err
	}
	return empty, nil
}

// addGarbage puts a block on the garbage list as freed by this command.
func (a *applyCtx) addGarbage(id BlockID) error {
	if id == 0 {
		return nil
	}
	if _, ok, err := a.get(garbIDKey(id)); err != nil || ok {
		return err
	}
	a.set(garbIDKey(id), binary.BigEndian.AppendUint64(nil, a.index))
	a.set(garbageKey(a.index, id), nil)
	return nil
}

// dropBlocksFrom turns the block map entries of ino at index >= from into
// garbage and deletes them.
func (a *applyCtx) dropBlocksFrom(ino Ino, from uint64) error {
	p := blockPrefix(ino)
	return a.scan(p, true, func(k, v []byte) error {
		if binary.BigEndian.Uint64(k[len(p):]) < from {
			return nil
		}
		if w, ok := a.writes[string(k)]; ok && w.del {
			return nil
		}
		ref, err := decodeBlockRef(v)
		if err != nil {
			return err
		}
		a.del(k)
		return a.addGarbage(ref.ID)
	})
}

// validName checks a new directory entry name as Linux does.
func validName(name string) error {
	switch {
	case name == "" || strings.IndexByte(name, '/') >= 0 || strings.IndexByte(name, 0) >= 0:
		return syscall.EINVAL
	case name == "." || name == "..":
		return syscall.EEXIST
	case len(name) > MaxNameLen:
		return syscall.ENAMETOOLONG
	}
	return nil
}

// existingName checks the name of an entry to remove or rename.
func existingName(name string) error {
	switch {
	case name == "" || strings.IndexByte(name, '/') >= 0:
		return syscall.EINVAL
	case name == "." || name == "..":
		return syscall.EBUSY
	case len(name) > MaxNameLen:
		return syscall.ENAMETOOLONG
	}
	return nil
}

func blocksFor(size uint64, bs uint64) uint64 { return (size + bs - 1) / bs }

// run applies a command. A POSIX failure comes back in applyResult.err;
// the error return is reserved for storage failures.
func (a *applyCtx) run(c *command) (*applyResult, error) {
	var res applyResult
	var err error
	switch c.Op {
	case opBootstrap:
		err = a.bootstrap(c)
	case opCreate:
		res.attr, err = a.create(c)
	case opSetAttr:
		res.attr, err = a.setAttr(c)
	case opLink:
		res.attr, err = a.link(c)
	case opUnlink:
		res.attr, err = a.unlink(c)
	case opRmdir:
		res.attr, err = a.rmdir(c)
	case opRename:
		res.ino, res.attr2, err = a.rename(c)
	case opCommitWrite:
		res.attr, err = a.commitWrite(c)
	case opAllocBlocks:
		res.n, err = a.allocBlocks(c)
	case opPurge:
		err = a.purge(c)
	case opForgetGarbage:
		err = a.forgetGarbage(c)
	case opSetXattr:
		err = a.setXattr(c)
	case opRemoveXattr:
		err = a.removeXattr(c)
	case opKV:
		res.data, err = a.applyKV(c)
	case opPutObject:
		res.attr, res.ino, res.attr2, err = a.putObject(c)
	default:
		err = syscall.EINVAL
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return &applyResult{err: errno}, nil
	}
	if err != nil {
		return nil, err
	}
	return &res, nil
}

func (a *applyCtx) bootstrap(c *command) error {
	if a.cnt.BlockSize != 0 && c.IfNew {
		return nil
	}
	if a.cnt.BlockSize != 0 {
		if a.cnt.BlockSize != uint64(c.BlockSize) {
			return syscall.EINVAL
		}
		return nil
	}
	if c.BlockSize == 0 {
		return syscall.EINVAL
	}
	a.cnt.BlockSize = uint64(c.BlockSize)
	a.cnt.NextIno = uint64(RootIno) + 1
	a.cnt.NextBlock = 1
	a.cnt.Inodes = 1
	root := &inodeEntry{dirty: true, attr: Attr{
		Ino: RootIno, Mode: syscall.S_IFDIR | 0o755, Nlink: 2, Parent: RootIno,
		Atime: c.Now, Mtime: c.Now, Ctime: c.Now, Version: 1,
	}}
	a.inodes[RootIno] = root
	return nil
}

func (a *applyCtx) touchDir(d *inodeEntry, now int64) {
	d.attr.Mtime, d.attr.Ctime, d.dirty = now, now, true
}

func (a *applyCtx) create(c *command) (Attr, error) {
	req := c.Create
	if req.Unlinked {
		return a.createUnlinked(req)
	}
	if err := validName(req.Name); err != nil {
		return Attr{}, err
	}
	parent, err := a.liveDir(req.Parent)
	if err != nil {
		return Attr{}, err
	}
	if _, _, ok, err := a.dentry(req.Parent, req.Name); err != nil || ok {
		if ok {
			return Attr{}, syscall.EEXIST
		}
		return Attr{}, err
	}
	mode := req.Mode
	if mode&syscall.S_IFMT == 0 {
		mode |= syscall.S_IFREG
	}
	attr := Attr{
		Ino: Ino(a.cnt.NextIno), Mode: mode, Uid: req.Uid, Gid: req.Gid, Nlink: 1,
		Atime: req.Now, Mtime: req.Now, Ctime: req.Now, Version: 1,
	}
	var target string
	switch mode & syscall.S_IFMT {
	case syscall.S_IFREG, syscall.S_IFIFO, syscall.S_IFSOCK:
	case syscall.S_IFCHR, syscall.S_IFBLK:
		attr.Rdev = req.Rdev
	case syscall.S_IFDIR:
		attr.Nlink, attr.Parent = 2, req.Parent
		if parent.attr.Nlink >= maxLinks {
			return Attr{}, syscall.EMLINK
		}
		parent.attr.Nlink++
	case syscall.S_IFLNK:
		switch {
		case req.Target == "":
			return Attr{}, syscall.ENOENT
		case len(req.Target) > MaxSymlinkLen:
			return Attr{}, syscall.ENAMETOOLONG
		}
		target, attr.Size = req.Target, uint64(len(req.Target))
	default:
		return Attr{}, syscall.EINVAL
	}
	a.cnt.NextIno++
	a.cnt.Inodes++
	a.inodes[attr.Ino] = &inodeEntry{attr: attr, target: target, dirty: true}
	a.set(dentryKey(req.Parent, req.Name), encodeDentry(attr.Ino, mode))
	a.touchDir(parent, req.Now)
	return attr, nil
}

// usedDelta adjusts UsedBytes for a regular file's size change.
func (a *applyCtx) resize(e *inodeEntry, size uint64) {
	if e.attr.IsRegular() {
		a.cnt.UsedBytes = a.cnt.UsedBytes - e.attr.Size + size
	}
	e.attr.Size = size
}

// truncateBlocks drops blocks past size and shortens the boundary block.
func (a *applyCtx) truncateBlocks(ino Ino, size uint64) error {
	bs := a.cnt.BlockSize
	if err := a.dropBlocksFrom(ino, blocksFor(size, bs)); err != nil {
		return err
	}
	if tail := size % bs; tail != 0 {
		k := blockKey(ino, size/bs)
		v, ok, err := a.get(k)
		if err != nil || !ok {
			return err
		}
		ref, err := decodeBlockRef(v)
		if err != nil {
			return err
		}
		if uint64(ref.Len) > tail {
			ref.Len = uint32(tail)
			a.set(k, encodeBlockRef(ref))
		}
	}
	return nil
}

func (a *applyCtx) setAttr(c *command) (Attr, error) {
	req := c.SetAttr
	e, err := a.inode(c.Ino)
	if err != nil {
		return Attr{}, err
	}
	if req.Valid&SetSize != 0 {
		switch {
		case e.attr.IsDir():
			return Attr{}, syscall.EISDIR
		case !e.attr.IsRegular():
			return Attr{}, syscall.EINVAL
		}
		if req.Size != e.attr.Size {
			if req.Size < e.attr.Size {
				if err := a.truncateBlocks(c.Ino, req.Size); err != nil {
					return Attr{}, err
				}
			}
			a.resize(e, req.Size)
			e.attr.Version++
			e.attr.Mtime = req.Now
		}
	}
	if req.Valid&SetMode != 0 {
		e.attr.Mode = e.attr.Mode&syscall.S_IFMT | req.Mode&0o7777
	}
	if req.Valid&SetUid != 0 {
		e.attr.Uid = req.Uid
	}
	if req.Valid&SetGid != 0 {
		e.attr.Gid = req.Gid
	}
	if req.Valid&SetAtime != 0 {
		e.attr.Atime = req.Atime
	}
	if req.Valid&SetMtime != 0 {
		e.attr.Mtime = req.Mtime
	}
	e.attr.Ctime = req.Now
	e.dirty = true
	return e.attr, nil
}

// createUnlinked makes an O_TMPFILE inode: a regular file in no directory,
// listed as an orphan until a link names it.
func (a *applyCtx) createUnlinked(req *CreateRequest) (Attr, error) {
	if req.Name != "" {
		return Attr{}, syscall.EINVAL
	}
	if _, err := a.liveDir(req.Parent); err != nil {
		return Attr{}, err
	}
	mode := req.Mode
	if mode&syscall.S_IFMT == 0 {
		mode |= syscall.S_IFREG
	}
	if mode&syscall.S_IFMT != syscall.S_IFREG {
		return Attr{}, syscall.EINVAL
	}
	attr := Attr{
		Ino: Ino(a.cnt.NextIno), Mode: mode, Uid: req.Uid, Gid: req.Gid,
		Atime: req.Now, Mtime: req.Now, Ctime: req.Now, Version: 1,
	}
	a.cnt.NextIno++
	a.cnt.Inodes++
	a.inodes[attr.Ino] = &inodeEntry{attr: attr, dirty: true}
	a.set(orphanKey(attr.Ino), []byte(orphanLinkable))
	return attr, nil
}

// orphanLinkable is the orphan-list value of an O_TMPFILE inode, the only
// kind of orphan that Link may name again (as Linux's I_LINKABLE).
const orphanLinkable = "\x01"

func (a *applyCtx) link(c *command) (Attr, error) {
	if err := validName(c.NewName); err != nil {
		return Attr{}, err
	}
	e, err := a.inode(c.Ino)
	if err != nil {
		return Attr{}, err
	}
	if e.attr.IsDir() {
		return Attr{}, syscall.EPERM
	}
	if e.attr.Nlink >= maxLinks {
		return Attr{}, syscall.EMLINK
	}
	parent, err := a.liveDir(c.NewParent)
	if err != nil {
		return Attr{}, err
	}
	if _, _, ok, err := a.dentry(c.NewParent, c.NewName); err != nil || ok {
		if ok {
			return Attr{}, syscall.EEXIST
		}
		return Attr{}, err
	}
	if e.attr.Nlink == 0 {
		// Only an O_TMPFILE inode may be named again; any other unlinked
		// inode is gone for good (as in Linux, which checks I_LINKABLE).
		v, _, err := a.get(orphanKey(e.attr.Ino))
		if err != nil {
			return Attr{}, err
		}
		if string(v) != orphanLinkable {
			return Attr{}, syscall.ENOENT
		}
		a.del(orphanKey(e.attr.Ino))
	}
	e.attr.Nlink++
	e.attr.Ctime, e.dirty = c.Now, true
	a.set(dentryKey(c.NewParent, c.NewName), encodeDentry(c.Ino, e.attr.Mode))
	a.touchDir(parent, c.Now)
	return e.attr, nil
}

// dropLink removes one link of a non-directory; at zero it becomes an orphan.
func (a *applyCtx) dropLink(e *inodeEntry, now int64) {
	if e.attr.Nlink > 0 {
		e.attr.Nlink--
	}
	e.attr.Ctime, e.dirty = now, true
	if e.attr.Nlink == 0 {
		a.set(orphanKey(e.attr.Ino), nil)
	}
}

func (a *applyCtx) unlink(c *command) (Attr, error) {
	if err := existingName(c.Name); err != nil {
		if errors.Is(err, syscall.EBUSY) {
			err = syscall.EISDIR
		}
		return Attr{}, err
	}
	parent, err := a.dir(c.Parent)
	if err != nil {
		return Attr{}, err
	}
	ino, _, ok, err := a.dentry(c.Parent, c.Name)
	if err != nil {
		return Attr{}, err
	}
	if !ok {
		return Attr{}, syscall.ENOENT
	}
	e, err := a.inode(ino)
	if err != nil {
		return Attr{}, err
	}
	if e.attr.IsDir() {
		return Attr{}, syscall.EISDIR
	}
	a.del(dentryKey(c.Parent, c.Name))
	a.dropLink(e, c.Now)
	a.touchDir(parent, c.Now)
	return e.attr, nil
}

// deleteInode removes an inode with its xattrs and block map; its blocks
// become garbage.
func (a *applyCtx) deleteInode(e *inodeEntry) error {
	ino := e.attr.Ino
	if err := a.dropBlocksFrom(ino, 0); err != nil {
		return err
	}
	if err := a.scan(xattrPrefix(ino), false, func(k, _ []byte) error {
		a.del(k)
		return nil
	}); err != nil {
		return err
	}
	a.resize(e, 0)
	a.del(orphanKey(ino))
	e.deleted = true
	a.cnt.Inodes--
	return nil
}

func (a *applyCtx) rmdir(c *command) (Attr, error) {
	switch c.Name {
	case ".":
		return Attr{}, syscall.EINVAL
	case "..":
		return Attr{}, syscall.ENOTEMPTY
	}
	if err := existingName(c.Name); err != nil {
		return Attr{}, err
	}
	parent, err := a.dir(c.Parent)
	if err != nil {
		return Attr{}, err
	}
	ino, _, ok, err := a.dentry(c.Parent, c.Name)
	if err != nil {
		return Attr{}, err
	}
	if !ok {
		return Attr{}, syscall.ENOENT
	}
	e, err := a.dir(ino)
	if err != nil {
		return Attr{}, err
	}
	empty, err := a.isEmptyDir(ino)
	if err != nil {
		return Attr{}, err
	}
	if !empty {
		return Attr{}, syscall.ENOTEMPTY
	}
	a.del(dentryKey(c.Parent, c.Name))
	a.orphanDir(e, c.Now)
	parent.attr.Nlink--
	a.touchDir(parent, c.Now)
	return e.attr, nil
}

// orphanDir unlinks an empty directory: like a file at zero links it stays
// readable by ino (an open descriptor can still fstat it) until Purge.
func (a *applyCtx) orphanDir(e *inodeEntry, now int64) {
	e.attr.Nlink = 0
	e.attr.Ctime, e.dirty = now, true
	a.set(orphanKey(e.attr.Ino), nil)
}

// inSubtree reports whether dir d is ino or lies below it, walking Parent
// up to the root.
func (a *applyCtx) inSubtree(d, ino Ino) (bool, error) {
	for i := 0; ; i++ {
		if d == ino {
			return true, nil
		}
		if d == RootIno || i > 1<<20 {
			return false, nil
		}
		e, err := a.inode(d)
		if err != nil {
			return false, err
		}
		d = e.attr.Parent
	}
}

// moveDir re-parents a directory that moved from one parent to another.
func (a *applyCtx) moveDir(e, from, to *inodeEntry) {
	if from == to {
		return
	}
	e.attr.Parent, e.dirty = to.attr.Ino, true
	from.attr.Nlink--
	to.attr.Nlink++
}

func (a *applyCtx) rename(c *command) (Ino, Attr, error) {
	flags := RenameFlags(c.Flags)
	if flags&^(RenameNoReplace|RenameExchange) != 0 || flags == RenameNoReplace|RenameExchange {
		return 0, Attr{}, syscall.EINVAL
	}
	if err := existingName(c.Name); err != nil {
		return 0, Attr{}, err
	}
	if err := existingName(c.NewName); err != nil {
		return 0, Attr{}, err
	}
	src, err := a.dir(c.Parent)
	if err != nil {
		return 0, Attr{}, err
	}
	dst, err := a.liveDir(c.NewParent)
	if err != nil {
		return 0, Attr{}, err
	}
	ino, mode, ok, err := a.dentry(c.Parent, c.Name)
	if err != nil {
		return 0, Attr{}, err
	}
	if !ok {
		return 0, Attr{}, syscall.ENOENT
	}
	tino, tmode, exists, err := a.dentry(c.NewParent, c.NewName)
	if err != nil {
		return 0, Attr{}, err
	}
	if exists && tino == ino {
		return 0, Attr{}, nil // same inode: nothing to do
	}
	e, err := a.inode(ino)
	if err != nil {
		return 0, Attr{}, err
	}
	if e.attr.IsDir() {
		if in, err := a.inSubtree(c.NewParent, ino); err != nil || in {
			if in {
				return 0, Attr{}, syscall.EINVAL
			}
			return 0, Attr{}, err
		}
	}
	if flags&RenameExchange != 0 {
		if !exists {
			return 0, Attr{}, syscall.ENOENT
		}
		t, err := a.inode(tino)
		if err != nil {
			return 0, Attr{}, err
		}
		if t.attr.IsDir() {
			if in, err := a.inSubtree(c.Parent, tino); err != nil || in {
				if in {
					return 0, Attr{}, syscall.EINVAL
				}
				return 0, Attr{}, err
			}
		}
		a.set(dentryKey(c.Parent, c.Name), encodeDentry(tino, tmode))
		a.set(dentryKey(c.NewParent, c.NewName), encodeDentry(ino, mode))
		if e.attr.IsDir() {
			a.moveDir(e, src, dst)
		}
		if t.attr.IsDir() {
			a.moveDir(t, dst, src)
		}
		e.attr.Ctime, e.dirty = c.Now, true
		t.attr.Ctime, t.dirty = c.Now, true
		a.touchDir(src, c.Now)
		a.touchDir(dst, c.Now)
		return 0, Attr{}, nil
	}
	var replaced *inodeEntry
	if exists {
		if flags&RenameNoReplace != 0 {
			return 0, Attr{}, syscall.EEXIST
		}
		t, err := a.inode(tino)
		if err != nil {
			return 0, Attr{}, err
		}
		switch {
		case e.attr.IsDir() && !t.attr.IsDir():
			return 0, Attr{}, syscall.ENOTDIR
		case !e.attr.IsDir() && t.attr.IsDir():
			return 0, Attr{}, syscall.EISDIR
		case t.attr.IsDir():
			empty, err := a.isEmptyDir(tino)
			if err != nil {
				return 0, Attr{}, err
			}
			if !empty {
				return 0, Attr{}, syscall.ENOTEMPTY
			}
		}
		replaced = t
	}
	a.del(dentryKey(c.Parent, c.Name))
	a.set(dentryKey(c.NewParent, c.NewName), encodeDentry(ino, mode))
	if e.attr.IsDir() {
		a.moveDir(e, src, dst)
	}
	e.attr.Ctime, e.dirty = c.Now, true
	a.touchDir(src, c.Now)
	a.touchDir(dst, c.Now)
	if replaced == nil {
		return 0, Attr{}, nil
	}
	if replaced.attr.IsDir() {
		dst.attr.Nlink--
		a.orphanDir(replaced, c.Now)
	} else {
		a.dropLink(replaced, c.Now)
	}
	return tino, replaced.attr, nil
}

func (a *applyCtx) commitWrite(c *command) (Attr, error) {
	w := c.Write
	bs := a.cnt.BlockSize
	if w.BlockSize != 0 && uint64(w.BlockSize) != bs {
		return Attr{}, syscall.EINVAL
	}
	e, err := a.inode(w.Ino)
	if err != nil {
		return Attr{}, err
	}
	switch {
	case e.attr.IsDir():
		return Attr{}, syscall.EISDIR
	case !e.attr.IsRegular():
		return Attr{}, syscall.EINVAL
	}
	idxs := make([]uint64, 0, len(w.Blocks))
	for i, ref := range w.Blocks {
		if uint64(ref.Len) > bs {
			return Attr{}, syscall.EINVAL
		}
		idxs = append(idxs, i)
	}
	sort.Slice(idxs, func(i, j int) bool { return idxs[i] < idxs[j] })
	end := blocksFor(w.Size, bs)
	// Entries past the new end go first: the scan sees the map as it was.
	if err := a.dropBlocksFrom(w.Ino, end); err != nil {
		return Attr{}, err
	}
	for _, i := range idxs {
		ref := w.Blocks[i]
		if i >= end {
			if err := a.addGarbage(ref.ID); err != nil {
				return Attr{}, err
			}
			continue
		}
		k := blockKey(w.Ino, i)
		v, ok, err := a.get(k)
		if err != nil {
			return Attr{}, err
		}
		if ok {
			old, err := decodeBlockRef(v)
			if err != nil {
				return Attr{}, err
			}
			if old.ID != ref.ID {
				if err := a.addGarbage(old.ID); err != nil {
					return Attr{}, err
				}
			}
		}
		if ref.ID == 0 {
			a.del(k)
		} else {
			a.set(k, encodeBlockRef(ref))
		}
	}
	if w.Size < e.attr.Size {
		if tail := w.Size % bs; tail != 0 {
			// Shorten the boundary block unless this commit rewrote it.
			if _, rewritten := w.Blocks[w.Size/bs]; !rewritten {
				if err := a.truncateBlocks(w.Ino, w.Size); err != nil {
					return Attr{}, err
				}
			}
		}
	}
	a.resize(e, w.Size)
	e.attr.Mtime = w.Mtime
	if e.attr.Mtime == 0 {
		e.attr.Mtime = w.Now
	}
	e.attr.Ctime = w.Now
	e.attr.Version++
	e.dirty = true
	return e.attr, nil
}

func (a *applyCtx) allocBlocks(c *command) (uint64, error) {
	if c.N == 0 || a.cnt.NextBlock+c.N < a.cnt.NextBlock {
		return 0, syscall.EINVAL
	}
	first := a.cnt.NextBlock
	a.cnt.NextBlock += c.N
	return first, nil
}

func (a *applyCtx) purge(c *command) error {
	e, err := a.inode(c.Ino)
	if errors.Is(err, syscall.ENOENT) {
		return nil // already purged: inode numbers are never reused
	}
	if err != nil {
		return err
	}
	if e.attr.Nlink > 0 || c.Ino == RootIno {
		return nil
	}
	return a.deleteInode(e)
}

func (a *applyCtx) forgetGarbage(c *command) error {
	for _, id := range c.IDs {
		v, ok, err := a.get(garbIDKey(id))
		if err != nil {
			return err
		}
		if !ok || len(v) != 8 {
			continue
		}
		a.del(garbIDKey(id))
		a.del(garbageKey(binary.BigEndian.Uint64(v), id))
	}
	return nil
}

func validXattr(name string, value []byte) error {
	switch {
	case name == "":
		return syscall.EINVAL
	case len(name) > MaxNameLen:
		return syscall.ERANGE
	case len(value) > MaxXattrSize:
		return syscall.E2BIG
	}
	return nil
}

func (a *applyCtx) setXattr(c *command) error {
	if err := validXattr(c.Name, c.Value); err != nil {
		return err
	}
	e, err := a.inode(c.Ino)
	if err != nil {
		return err
	}
	k := xattrKey(c.Ino, c.Name)
	_, ok, err := a.get(k)
	if err != nil {
		return err
	}
	flags := XattrFlags(c.Flags)
	switch {
	case flags&XattrCreate != 0 && ok:
		return syscall.EEXIST
	case flags&XattrReplace != 0 && !ok:
		return syscall.ENODATA
	}
	v := c.Value
	if v == nil {
		v = []byte{}
	}
	a.set(k, bytes.Clone(v))
	e.attr.Ctime, e.dirty = c.Now, true
	return nil
}

func (a *applyCtx) removeXattr(c *command) error {
	if err := validXattr(c.Name, nil); err != nil {
		return err
	}
	e, err := a.inode(c.Ino)
	if err != nil {
		return err
	}
	k := xattrKey(c.Ino, c.Name)
	_, ok, err := a.get(k)
	if err != nil {
		return err
	}
	if !ok {
		return syscall.ENODATA
	}
	a.del(k)
	e.attr.Ctime, e.dirty = c.Now, true
	return nil
}
