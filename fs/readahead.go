package fs

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/datenlord/datenlord-go/cache"
)

const (
	// readaheadBytes is how far past a sequential reader's furthest read
	// blocks are kept loading (16 blocks of 512 KiB). It must exceed
	// readaheadParallel blocks, so that the bound, not the window, limits
	// the requests in flight while the reader consumes: with a window of
	// only readaheadParallel blocks, every block the reader finishes frees
	// one slot that is refilled a whole block-read later.
	readaheadBytes = 8 << 20
	// readaheadMinBlocks is the window in blocks when blocks are so large
	// that readaheadBytes holds fewer.
	readaheadMinBlocks = 2
	// readaheadParallel bounds the block prefetches in flight on the node.
	readaheadParallel = 8
	// seqSlack is how many read sizes a read may land before or after the
	// furthest end of a sequential run and still continue it. The kernel
	// splits a large read into several FUSE reads (128 KiB each with its
	// default readahead) and sends them concurrently, so they arrive
	// slightly out of order; an exact-offset test would call the stream
	// random and restart readahead every few reads.
	seqSlack = 8
)

// kernelReadaheadKB is the kernel readahead set on a mount (its
// backing device's read_ahead_kb). The kernel offers FUSE 128 KiB, so a
// 1 MiB read(2) arrives as eight 128 KiB FUSE reads; at 512 KiB a sequential
// reader costs a quarter of the FUSE requests (a warm 48 MiB read went from
// about 900 to 2000 MB/s). Not 1 MiB: a 1 MiB reply plus its header no
// longer fits go-fuse's splice pipe (pipe-max-size), which then falls back
// to copying and logs every reply. The kernel still reads small and
// synchronously for random readers; this only caps its sequential window.
const kernelReadaheadKB = 512

// setKernelReadahead raises the kernel readahead of the FUSE mount at mp to
// kernelReadaheadKB through /sys/class/bdi/MAJOR:MINOR/read_ahead_kb. It
// is best effort: without root or sysfs, reads are only smaller.
func setKernelReadahead(mp string) error {
	var st unix.Stat_t
	if err := unix.Stat(mp, &st); err != nil {
		return fmt.Errorf("stat %s: %w", mp, err)
	}
	p := fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev))
	if err := os.WriteFile(p, []byte(strconv.Itoa(kernelReadaheadKB)), 0); err != nil {
		return fmt.Errorf("set kernel readahead: %w", err)
	}
	return nil
}

// readahead is a handle's sequential-access detector and prefetch state.
// The zero value is a handle that has not read yet.
type readahead struct {
	mu sync.Mutex
	// started is set by the first read.
	started bool
	// end is the furthest end of the current sequential run (or of the
	// last read, after a random one); seq tells whether a run is on.
	end uint64
	seq bool
	// next is the first block index not yet handed to a prefetch.
	next uint64
}

// startPrefetcher is the part of *cache.Cache that registers a prefetch
// before it runs, so that a reader missing one of its pages waits for it
// instead of issuing a second request (see cache.Cache.StartPrefetch).
type startPrefetcher interface {
	StartPrefetch(block uint64, blockLen int, fromPage uint32, access cache.Access) func(ctx context.Context) error
}

// observeRead classifies the read of n bytes at off on handle h and, for
// a sequential reader, keeps the blocks ahead of it loading (readahead).
// It returns whether the read is sequential. A read is sequential when it
// starts where the run's furthest read ended, or, once a run is on, within
// seqSlack read sizes of it (reordered kernel reads). The first read of a
// handle is not sequential, so a handle that reads once starts no
// prefetch. f.mu is held (shared).
func (fs *fileSystem) observeRead(h *handle, f *openFile, off, n uint64) bool {
	r := &h.ra
	r.mu.Lock()
	end := off + n
	slack := seqSlack * max(n, 1)
	seq := r.started && (off == r.end || r.seq && off+slack >= r.end && off <= r.end+slack)
	r.started = true
	if !seq {
		r.seq = false
		r.end = end
		r.next = 0
		r.mu.Unlock()
		return false
	}
	r.seq = true
	r.end = max(r.end, end)
	from, to, ok := fs.readaheadWindow(r, f, off)
	r.mu.Unlock()
	if ok {
		fs.readahead(f, from, to)
	}
	return true
}

// readaheadWindow returns the blocks [from, to) a sequential read at off
// should hand to prefetches (r.mu held), and advances r.next past them:
// from the block being read (unless already handed off) to the window's
// end past r.end. The reader's own block is included: the prefetch
// registers it before the reader misses (one GET for the whole block
// rather than one per page), and the reader waits for it.
func (fs *fileSystem) readaheadWindow(r *readahead, f *openFile, off uint64) (from, to uint64, ok bool) {
	if f.size == 0 {
		return 0, 0, false
	}
	bs := fs.blockSize
	last := (f.size - 1) / bs
	window := max(readaheadBytes/bs, readaheadMinBlocks)
	from = max(r.next, off/bs)
	to = min((r.end-1)/bs+1+window, last+1)
	if from >= to {
		return 0, 0, false
	}
	r.next = to
	return from, to, true
}

// readahead starts loading blocks [from, to) of f into the cache, one
// ranged store read per block, in file order. Each prefetch is registered
// with the cache at once (so the reader joins it rather than fetching the
// same pages) and runs once fs.raSem admits it: at most
// readaheadParallel block reads are in flight on the node. It never blocks
// the reader. f.mu is held (shared).
func (fs *fileSystem) readahead(f *openFile, from, to uint64) {
	sp, _ := fs.cache.(startPrefetcher)
	type job struct {
		id  uint64
		run func(ctx context.Context) error
	}
	var jobs []job
	for bi := from; bi < to; bi++ {
		if f.dirty[bi] != nil {
			continue
		}
		ref, ok := f.blocks[bi]
		if !ok || ref.ID == 0 || ref.Len == 0 {
			continue
		}
		id, blen := uint64(ref.ID), int(ref.Len)
		run := func(ctx context.Context) error {
			return fs.cache.Prefetch(ctx, id, blen, 0, cache.AccessSequential)
		}
		if sp != nil {
			if run = sp.StartPrefetch(id, blen, 0, cache.AccessSequential); run == nil {
				continue // cached, or already loading
			}
		}
		fs.m.readaheadStarted()
		jobs = append(jobs, job{id, run})
	}
	if len(jobs) == 0 {
		return
	}
	// One feeder takes the slots in file order (goroutines started in a
	// loop would race for them, the newest often first).
	go func() {
		for _, j := range jobs {
			fs.raSem <- struct{}{}
			go func() {
				defer func() { <-fs.raSem }()
				if err := j.run(fs.ctx()); err != nil {
					// The reader will fetch the pages itself and report errors.
					fs.log.Debug("fs: readahead failed", "ino", f.ino, "block", j.id, "err", err)
				}
			}()
		}
	}()
}
