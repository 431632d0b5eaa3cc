package meta

import (
	"syscall"
)

// Ino is an inode number. Inode numbers are never reused.
type Ino uint64

// RootIno is the inode number of the root directory, created when the
// namespace is first bootstrapped.
const RootIno Ino = 1

// BlockID names one immutable block in the persistence store. Block ids are
// handed out by the metadata leader in ranges (AllocBlocks) and never reused,
// so a cached page of a block is valid for as long as the block exists.
type BlockID uint64

// BlockRef is one entry of a file's block map: the block that holds the
// bytes of block index i, and how many of its bytes belong to the file.
// Bytes of the block at or past Len read as zeros (truncation shortens Len
// instead of rewriting the block).
type BlockRef struct {
	ID  BlockID
	Len uint32
}

// BlockMap maps a block index (file offset / block size) to its block. An
// index that is absent is a hole and reads as zeros.
type BlockMap map[uint64]BlockRef

// Attr holds the attributes of one inode.
type Attr struct {
	Ino  Ino
	Mode uint32 // permission bits and the S_IFMT file type bits
	Uid  uint32
	Gid  uint32
	// Size is the file size in bytes (for a symlink, the target length).
	Size  uint64
	Nlink uint32
	Rdev  uint32
	// Atime, Mtime and Ctime are Unix times in nanoseconds.
	Atime int64
	Mtime int64
	Ctime int64
	// Version rises on every change of the file's content or size.
	Version uint64
	// Parent is the parent directory of a directory (RootIno for the root);
	// zero for other types, which can have several parents (hard links).
	Parent Ino
}

// IsDir reports whether the inode is a directory.
func (a *Attr) IsDir() bool { return a.Mode&syscall.S_IFMT == syscall.S_IFDIR }

// IsRegular reports whether the inode is a regular file.
func (a *Attr) IsRegular() bool { return a.Mode&syscall.S_IFMT == syscall.S_IFREG }

// IsSymlink reports whether the inode is a symbolic link.
func (a *Attr) IsSymlink() bool { return a.Mode&syscall.S_IFMT == syscall.S_IFLNK }

// Dirent is one directory entry.
type Dirent struct {
	Name string
	Ino  Ino
	// Mode holds the S_IFMT type bits of the child.
	Mode uint32
}

// SetAttrMask says which fields of a SetAttrRequest apply.
type SetAttrMask uint32

// The fields that SetAttr can change.
const (
	SetMode SetAttrMask = 1 << iota
	SetUid
	SetGid
	SetSize
	SetAtime
	SetMtime
	SetCtime
)

// SetAttrRequest changes attributes of an inode. Times are Unix nanoseconds
// chosen by the proposer (the state machine is deterministic and never reads
// the clock). Ctime is always set to Now.
type SetAttrRequest struct {
	Valid SetAttrMask
	Mode  uint32 // permission bits only; the file type cannot change
	Uid   uint32
	Gid   uint32
	Size  uint64
	Atime int64
	Mtime int64
	// Now is the proposer's clock, used for ctime (and mtime on truncate).
	Now int64
}

// CreateRequest creates a new inode and links it under Parent as Name.
type CreateRequest struct {
	Parent Ino
	Name   string
	Mode   uint32 // including the S_IFMT type bits (regular, fifo, socket, char, block, directory)
	Rdev   uint32
	Uid    uint32
	Gid    uint32
	// Target is the symlink target, for S_IFLNK.
	Target string
	Now    int64
	// Unlinked creates a regular file with no name (O_TMPFILE): an orphan
	// from birth, in no directory, purged on its last close unless a link
	// names it first. Name must be empty; Parent is only checked to be a
	// live directory.
	Unlinked bool
}

// RenameFlags are the flags of renameat2(2).
type RenameFlags uint32

// Rename flags, as in <linux/fs.h>.
const (
	RenameNoReplace RenameFlags = 1 << 0
	RenameExchange  RenameFlags = 1 << 1
)

// RenameResult reports what a rename did to an entry it replaced.
type RenameResult struct {
	// Replaced is the inode that was unlinked from the target name, zero if
	// none. ReplacedAttr holds its attributes afterwards (Nlink may be 0).
	Replaced     Ino
	ReplacedAttr Attr
}

// WriteCommit commits the result of one flush of a file: new immutable
// blocks for some block indexes, the new size and mtime, all atomically.
type WriteCommit struct {
	Ino Ino
	// Blocks replaces these block map entries. A ref with ID 0 removes the
	// entry (makes a hole).
	Blocks map[uint64]BlockRef
	// Size is the file size after the flush.
	Size  uint64
	Mtime int64
	Now   int64
	// BlockSize is the file system block size, used to drop block map
	// entries past Size.
	BlockSize uint32
}

// Garbage is a block that no inode references any more and that can be
// deleted from the persistence store once no open handle can still read it.
type Garbage struct {
	ID BlockID
	// FreedAt is the Raft index of the command that dropped the last
	// reference.
	FreedAt uint64
}

// FSStats summarizes the namespace for statfs.
type FSStats struct {
	Inodes    uint64
	UsedBytes uint64
}

// XattrFlags are the flags of setxattr(2).
type XattrFlags uint32

// setxattr flags.
const (
	XattrCreate  XattrFlags = 1
	XattrReplace XattrFlags = 2
)

// MaxNameLen is the longest directory entry name, in bytes.
const MaxNameLen = 255

// MaxSymlinkLen is the longest symlink target, in bytes.
const MaxSymlinkLen = 4095

// MaxXattrSize is the largest extended attribute value, in bytes.
const MaxXattrSize = 64 * 1024
