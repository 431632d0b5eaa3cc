package fs

import (
	"sync"

	"github.com/datenlord/datenlord-go/cache"
)

const (
	// readaheadBlocks is how many whole blocks past the one being read are
	// kept loading for a sequential reader (2 MiB with 512 KiB blocks).
	readaheadBlocks = 4
	// readaheadParallel bounds the block prefetches in flight on the node.
	readaheadParallel = 8
)

// readahead is a handle's prefetch state.
type readahead struct {
	mu sync.Mutex
	// next is the first block index not yet handed to a prefetch.
	next uint64
}

// reset forgets the prefetch position after a random access.
func (r *readahead) reset() {
	r.mu.Lock()
	r.next = 0
	r.mu.Unlock()
}

// readahead starts loading the blocks after the one that holds end (the
// offset just past a sequential read) into the cache, one ranged store
// read per block, so that the reader finds them there. It never blocks
// the reader: prefetches run in goroutines bounded node-wide by
// fs.raSem. The block being read is left to the reader itself, so the two
// never fetch the same page at once. f.mu is held (shared).
func (fs *fileSystem) readahead(h *handle, f *openFile, end uint64) {
	if f.size == 0 || end >= f.size {
		return
	}
	bs := fs.blockSize
	cur := end / bs
	last := (f.size - 1) / bs
	h.ra.mu.Lock()
	from := max(h.ra.next, cur+1)
	to := min(cur+1+readaheadBlocks, last+1)
	if from >= to {
		h.ra.mu.Unlock()
		return
	}
	h.ra.next = to
	h.ra.mu.Unlock()
	for bi := from; bi < to; bi++ {
		if f.dirty[bi] != nil {
			continue
		}
		ref, ok := f.blocks[bi]
		if !ok || ref.ID == 0 || ref.Len == 0 {
			continue
		}
		fs.m.readaheadStarted()
		go func() {
			fs.raSem <- struct{}{}
			defer func() { <-fs.raSem }()
			if err := fs.cache.Prefetch(fs.ctx(), uint64(ref.ID), int(ref.Len), 0, cache.AccessSequential); err != nil {
				// The reader will fetch the pages itself and report errors.
				fs.log.Debug("fs: readahead failed", "ino", f.ino, "block", ref.ID, "err", err)
			}
		}()
	}
}
