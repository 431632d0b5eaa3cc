// Package fs serves the datenlord namespace as a POSIX file system through
// FUSE, with the raw protocol API of hanwen/go-fuse/v2.
//
// # Structure
//
// Mount builds a fileSystem (rawfs.go: namespace operations; file.go:
// open files, reads, writes and flushes; dir.go: directory handles) over
// three parts it consumes through interfaces defined here: Metadata
// (*meta.Service), PageCache (*cache.Cache) and BlockWriter (store.Store).
// FUSE node ids are meta inode numbers (node id 1 is meta.RootIno), so
// there is no node table: Lookup and Forget keep no state.
//
// Files open on this node have one openFile each, shared by all their
// handles and refcounted: the cached block map (loaded at open, refreshed
// at every open and after every commit), the local size and mtime, and the
// dirty blocks. Directories that are open hold a reference too, so that an
// unlinked inode is purged only when nothing on this node has it open.
//
// # Write path
//
// A write copies into whole-block dirty buffers. The first write into a
// block that does not cover it reads the old content through the cache
// (the merge); bytes past the old block length or in a hole are zeros.
// Dirty memory is bounded node-wide by Config.DirtyLimit: a write that
// would exceed it flushes its own file first, then the other dirty files.
//
// A flush (close(2) sends FLUSH, and fsync, truncate, release, budget
// pressure and Unmount flush too) takes fresh block ids from meta in
// ranges of 64, writes each dirty block with store.Put (up to 6 at a time,
// only the bytes below the file size), inserts it into the cache, and then
// commits all new block refs, size and mtime with ONE meta.CommitWrite.
// Success is returned only after the commit. If a Put fails the data stays
// dirty (a later fsync retries), the metadata is untouched, and the error
// is ENOSPC (or EDQUOT) when the store is full, EIO otherwise.
//
// # Read path
//
// A read maps (offset, length) to blocks: dirty blocks are copied from
// memory, holes read as zeros, stored blocks are read page by page with
// cache.ReadPage (bytes past a block's length are zeros); nothing past the
// file size is returned. A read that starts where the previous read of
// the handle ended is passed to the cache as sequential.
//
// # Consistency and kernel caching
//
// Close-to-open: FLUSH commits before close(2) returns, and Open never sets
// FOPEN_KEEP_CACHE, so the kernel drops its cached pages on every open and
// reads what the last close committed. Open flags are never echoed back as
// FUSE open flags. Attributes and entries are cached by the kernel for
// Config.AttrTimeout and Config.EntryTimeout (default 1s each: short,
// because other nodes will change inodes and invalidation notices come
// later); negative entries are not cached (timeout 0), so a file created
// on another node is visible at once.
//
// # Errors
//
// meta returns POSIX conditions as syscall.Errno values (possibly
// wrapped); they are passed to the kernel as they are. Anything else is an
// internal error: it is logged and reported as EIO. Names longer than 255
// bytes are ENAMETOOLONG. EXDEV is never returned.
//
// # Locks
//
// MountOptions.EnableLocks is false: the Linux kernel implements flock(2),
// POSIX (fcntl) and OFD locks for this mount itself. That is exactly
// local-node semantics: locks conflict between processes and open file
// descriptions on this node, and are not seen by other nodes.
//
// # Unlinked files and garbage collection
//
// When an inode's last link goes, it is purged at once if nothing on this
// node has it open, else at the last release; Mount purges every orphan
// left by an earlier run. FS.OldestOpenIndex and FS.InFlightBlocks tell the
// garbage collector which blocks open files may still read and which
// blocks are being written.
package fs
