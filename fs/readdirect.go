package fs

import (
	"context"
	"fmt"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/meta"
)

// prefetchPinner is the part of *cache.Cache that lends a sequential
// reader the bytes of a block prefetch without copying them (see
// cache.Cache.PinPrefetched). A PageCache without it serves every read
// through ReadPage.
type prefetchPinner interface {
	PinPrefetched(ctx context.Context, block uint64, off, n int) (data []byte, unpin func(), ok bool, err error)
}

var _ prefetchPinner = (*cache.Cache)(nil)

// pinnedRead is the reply of a sequential read: the file's bytes as a
// list of slices, some lent by prefetches (released by Done, after
// go-fuse has written the reply), the rest in the request's own buffer.
// go-fuse writes the slices to the kernel with one writev, so a block
// that a prefetch fetched goes from its buffer to the kernel without
// passing through the memory tier (a copy and a checksum each way).
type pinnedRead struct {
	vecs   [][]byte
	unpins []func()
	size   int
}

var _ fuse.ReadResult = (*pinnedRead)(nil)

// Size returns the reply's length.
func (r *pinnedRead) Size() int { return r.size }

// Bytes concatenates the slices into buf (go-fuse's fallback path).
func (r *pinnedRead) Bytes(buf []byte) ([]byte, fuse.Status) {
	buf = buf[:0]
	for _, v := range r.vecs {
		buf = append(buf, v...)
	}
	return buf, fuse.OK
}

// Slices returns the slices for a vectored write to the kernel; go-fuse
// may call it more than once.
func (r *pinnedRead) Slices() ([][]byte, fuse.Status) { return r.vecs, fuse.OK }

// Done releases the lent prefetch buffers; go-fuse calls it once the
// reply is written (or dropped).
func (r *pinnedRead) Done() {
	for _, u := range r.unpins {
		u()
	}
	r.unpins = nil
}

// add appends a slice to the reply.
func (r *pinnedRead) add(b []byte) {
	if len(b) == 0 {
		return
	}
	r.vecs = append(r.vecs, b)
	r.size += len(b)
}

// readSequential is readLocked for a sequential reader: it returns the
// len(buf) file bytes at off (f.mu held, off+len(buf) <= f.size). The
// bytes of stored blocks that a prefetch holds are lent from its buffer;
// dirty blocks, holes and blocks no prefetch holds are read into buf as
// readLocked does. On error nothing stays pinned.
func (fs *fileSystem) readSequential(ctx context.Context, f *openFile, off uint64, buf []byte, pp prefetchPinner) (*pinnedRead, error) {
	r := &pinnedRead{}
	bs := fs.blockSize
	dst := buf
	for len(dst) > 0 {
		bi, boff := off/bs, off%bs
		chunk := min(uint64(len(dst)), bs-boff)
		ref, stored := f.blocks[bi]
		if d := f.dirty[bi]; d != nil || !stored || ref.ID == 0 {
			if err := fs.readLocked(ctx, f, off, dst[:chunk], cache.AccessSequential); err != nil {
				r.Done()
				return nil, err
			}
			r.add(dst[:chunk])
		} else if err := fs.readStoredSequential(ctx, r, ref, boff, dst[:chunk], pp); err != nil {
			r.Done()
			return nil, err
		}
		dst = dst[chunk:]
		off += chunk
	}
	return r, nil
}

// readStoredSequential appends bytes [boff, boff+len(dst)) of a stored
// block to r: lent by the block's prefetch if one holds them, else read
// through the cache into dst. Bytes at or past ref.Len are zeros.
func (fs *fileSystem) readStoredSequential(ctx context.Context, r *pinnedRead, ref meta.BlockRef, boff uint64, dst []byte, pp prefetchPinner) error {
	blen := uint64(ref.Len)
	if boff < blen {
		valid := min(uint64(len(dst)), blen-boff)
		data, unpin, ok, err := pp.PinPrefetched(ctx, uint64(ref.ID), int(boff), int(valid))
		if err != nil {
			return fmt.Errorf("read block %d: %w", ref.ID, err)
		}
		if ok {
			r.unpins = append(r.unpins, unpin)
			r.add(data)
			tail := dst[valid:]
			clear(tail)
			r.add(tail)
			return nil
		}
	}
	if err := fs.readBlock(ctx, ref, boff, dst, cache.AccessSequential); err != nil {
		return err
	}
	r.add(dst)
	return nil
}
