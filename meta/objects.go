package meta

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"syscall"
)

// Objects: one command that publishes a whole file.
//
// An object store's PUT replaces a key with new content, metadata and all,
// atomically. Done with the POSIX-shaped commands it costs four Raft
// commits (create a temporary file, commit its blocks, set its xattrs,
// rename it into place). PutObject does it in one: it creates a regular
// file with its block map, size, mtime and xattrs and links it at
// (Parent, Name), replacing a regular file there as rename does (the
// replaced inode loses a link and becomes an orphan at zero links;
// a directory is refused with EISDIR).
//
// With Parts it assembles a multipart upload without copying data: the
// block maps of the part files move, in order, into the new file. Every
// part but the last must be a whole number of blocks long. The moved
// blocks never go on the garbage list: in the same transaction they leave
// the part (which is emptied to size 0) and join the new file, so at every
// index some inode references them, and the garbage collector, which
// deletes only listed garbage and blocks no inode references, never sees
// them unreferenced. The emptied parts are unlinked later like any file;
// their purge frees nothing.

// InitialVersion is the content version of an inode that Create or
// PutObject makes.
const InitialVersion = 1

// ObjectPart names a regular file whose blocks PutObject moves into the
// new file.
type ObjectPart struct {
	Ino Ino
	// Version is the part's content version the caller saw: if the part
	// changed since, the command fails with ESTALE.
	Version uint64
}

// PutObjectRequest creates a regular file with its content and xattrs and
// links it at Parent/Name, replacing a regular file of that name.
type PutObjectRequest struct {
	Parent Ino
	Name   string
	// Mode holds the permission bits (file type bits, if any, must be
	// S_IFREG).
	Mode uint32
	Uid  uint32
	Gid  uint32
	// Blocks is the block map of the new file (stored blocks, every index
	// below the last block of Size; a missing index is a hole). It must be
	// empty when Parts is set.
	Blocks map[uint64]BlockRef
	// Parts, if set, are moved into the new file in order instead: part i
	// starts at the block after part i-1 ends. Every part but the last
	// must be a multiple of the block size long (EINVAL otherwise), and
	// a part may appear once.
	Parts []ObjectPart
	// Size is the file size; with Parts it must be the sum of their sizes.
	Size uint64
	// Mtime is the file's mtime (0: Now).
	Mtime int64
	Now   int64
	// BlockSize, if set, must be the namespace block size.
	BlockSize uint32
	// Xattrs are set on the new file.
	Xattrs map[string][]byte
	// NoReplace fails with EEXIST if Name exists, as RENAME_NOREPLACE.
	NoReplace bool
}

// PutObjectResult reports what PutObject made and replaced.
type PutObjectResult struct {
	// Attr holds the attributes of the new file.
	Attr Attr
	// Replaced is the inode that Name named before, zero if none;
	// ReplacedAttr holds its attributes afterwards (Nlink 0: an orphan).
	Replaced     Ino
	ReplacedAttr Attr
}

// PutObject creates and links a file with its content in one command (see
// PutObjectRequest). Errors: ENOENT (Parent missing or removed), ENOTDIR,
// EISDIR (Name is a directory, or a part is), EEXIST (NoReplace), EINVAL
// (a malformed request: bad mode, block map past Size, unaligned part, a
// part twice, Size not the parts' sum), ESTALE (a part changed),
// ENAMETOOLONG, and the xattr errors of SetXattr (ERANGE, E2BIG).
func (s *Service) PutObject(ctx context.Context, req PutObjectRequest) (PutObjectResult, error) {
	if err := validName(req.Name); err != nil {
		return PutObjectResult{}, err
	}
	if err := checkPutObject(&req, uint64(s.blockSize)); err != nil {
		return PutObjectResult{}, err
	}
	res, err := s.apply(ctx, &command{Op: opPutObject, Put: &req, Now: req.Now})
	if err != nil {
		return PutObjectResult{}, err
	}
	return PutObjectResult{Attr: res.attr, Replaced: res.ino, ReplacedAttr: res.attr2}, nil
}

// checkPutObject validates what a PutObjectRequest says by itself; bs is
// the namespace block size (0: unknown, not checked).
func checkPutObject(req *PutObjectRequest, bs uint64) error {
	if t := req.Mode & syscall.S_IFMT; t != 0 && t != syscall.S_IFREG {
		return syscall.EINVAL
	}
	if req.BlockSize != 0 && bs != 0 && uint64(req.BlockSize) != bs {
		return syscall.EINVAL
	}
	if len(req.Parts) > 0 && len(req.Blocks) > 0 {
		return syscall.EINVAL
	}
	if bs != 0 {
		end := blocksFor(req.Size, bs)
		for i, ref := range req.Blocks {
			if i >= end || uint64(ref.Len) > bs {
				return syscall.EINVAL
			}
		}
	}
	for name, v := range req.Xattrs {
		if err := validXattr(name, v); err != nil {
			return err
		}
	}
	return nil
}

// putObject applies opPutObject: the new attributes, and the replaced
// inode with its attributes afterwards (zero if none).
func (a *applyCtx) putObject(c *command) (Attr, Ino, Attr, error) {
	req := c.Put
	if req == nil {
		return Attr{}, 0, Attr{}, syscall.EINVAL
	}
	bs := a.cnt.BlockSize
	if err := validName(req.Name); err != nil {
		return Attr{}, 0, Attr{}, err
	}
	if err := checkPutObject(req, bs); err != nil {
		return Attr{}, 0, Attr{}, err
	}
	parent, err := a.liveDir(req.Parent)
	if err != nil {
		return Attr{}, 0, Attr{}, err
	}
	tino, _, exists, err := a.dentry(req.Parent, req.Name)
	if err != nil {
		return Attr{}, 0, Attr{}, err
	}
	var replaced *inodeEntry
	if exists {
		if req.NoReplace {
			return Attr{}, 0, Attr{}, syscall.EEXIST
		}
		if replaced, err = a.inode(tino); err != nil {
			return Attr{}, 0, Attr{}, err
		}
		if replaced.attr.IsDir() {
			return Attr{}, 0, Attr{}, syscall.EISDIR
		}
	}
	ino := Ino(a.cnt.NextIno)
	if len(req.Parts) > 0 {
		if err := a.moveParts(req, ino); err != nil {
			return Attr{}, 0, Attr{}, err
		}
	} else {
		for _, i := range slices.Sorted(maps.Keys(req.Blocks)) {
			if ref := req.Blocks[i]; ref.ID != 0 {
				a.set(blockKey(ino, i), encodeBlockRef(ref))
			}
		}
	}
	mtime := req.Mtime
	if mtime == 0 {
		mtime = req.Now
	}
	e := &inodeEntry{dirty: true, attr: Attr{
		Ino: ino, Mode: req.Mode&07777 | syscall.S_IFREG, Uid: req.Uid, Gid: req.Gid, Nlink: 1,
		Atime: req.Now, Mtime: mtime, Ctime: req.Now, Version: InitialVersion,
	}}
	a.resize(e, req.Size)
	a.inodes[ino] = e
	a.cnt.NextIno++
	a.cnt.Inodes++
	for name, v := range req.Xattrs {
		if v == nil {
			v = []byte{}
		}
		a.set(xattrKey(ino, name), bytes.Clone(v))
	}
	a.set(dentryKey(req.Parent, req.Name), encodeDentry(ino, e.attr.Mode))
	a.touchDir(parent, req.Now)
	if replaced == nil {
		return e.attr, 0, Attr{}, nil
	}
	a.dropLink(replaced, req.Now)
	return e.attr, tino, replaced.attr, nil
}

// moveParts moves the block maps of req.Parts, in order, to inode ino and
// empties the parts (size 0, version bumped). No block becomes garbage.
func (a *applyCtx) moveParts(req *PutObjectRequest, ino Ino) error {
	bs := a.cnt.BlockSize
	seen := make(map[Ino]bool, len(req.Parts))
	var next, size uint64 // the first block index of the part; bytes so far
	for i, p := range req.Parts {
		if seen[p.Ino] {
			return syscall.EINVAL
		}
		seen[p.Ino] = true
		e, err := a.inode(p.Ino)
		if err != nil {
			return err
		}
		switch {
		case e.attr.IsDir():
			return syscall.EISDIR
		case !e.attr.IsRegular():
			return syscall.EINVAL
		case e.attr.Version != p.Version:
			return syscall.ESTALE
		case i < len(req.Parts)-1 && e.attr.Size%bs != 0:
			return syscall.EINVAL
		}
		n := blocksFor(e.attr.Size, bs)
		pfx := blockPrefix(p.Ino)
		// The scan sees the map as of the command's start: nothing below
		// writes the part's keys before it.
		if err := a.scan(pfx, true, func(k, v []byte) error {
			idx := binary.BigEndian.Uint64(k[len(pfx):])
			a.del(k)
			if idx >= n {
				// Past the part's end (never left by a commit): such a block
				// is not part of the content, and no longer referenced.
				ref, err := decodeBlockRef(v)
				if err != nil {
					return err
				}
				return a.addGarbage(ref.ID)
			}
			a.set(blockKey(ino, next+idx), v)
			return nil
		}); err != nil {
			return fmt.Errorf("move the blocks of part %d: %w", p.Ino, err)
		}
		next += n
		size += e.attr.Size
		a.resize(e, 0)
		e.attr.Version++
		e.attr.Mtime, e.attr.Ctime, e.dirty = req.Now, req.Now, true
	}
	if size != req.Size {
		return syscall.EINVAL
	}
	return nil
}
