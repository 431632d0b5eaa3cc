package fs

import (
	"context"
	"fmt"
	"io"

	"github.com/datenlord/datenlord-go/cache"
)

// pagePinner is the part of *cache.Cache that hands out pinned, read-only
// views of memory-tier pages (see cache.Cache.PinPage).
type pagePinner interface {
	PinPage(ctx context.Context, key cache.PageKey, length int) (cache.PinnedPage, bool)
}

var _ pagePinner = (*cache.Cache)(nil)

// Span is a read-only piece of file data returned by Reader.ReadSpans:
// either a view of a page pinned in the cache's memory (no copy) or bytes
// copied into the caller's scratch buffer. Data is valid until Release.
type Span struct {
	// Data is the span's bytes; they must not be modified.
	Data []byte
	pin  cache.PinnedPage
}

// Pinned reports whether the span is a view of cache memory.
func (s *Span) Pinned() bool { return s.pin.Bytes() != nil }

// Release unpins the span's page, if any. It is idempotent.
func (s *Span) Release() {
	s.pin.Release()
	s.Data = nil
}

// ReleaseSpans releases every span of spans.
func ReleaseSpans(spans []Span) {
	for i := range spans {
		spans[i].Release()
	}
}

// ReadSpans reads up to len(scratch) bytes at off, like ReadAt, but
// returns them as spans appended to spans instead of copying them into one
// buffer: whole or partial pages the memory tier holds are pinned views
// of the cache (validated as a copying read validates them), the rest
// (misses, which are fetched and cached as by ReadAt, unflushed writes,
// holes) is copied into scratch at its offset from off, adjacent copies
// forming one span. n is the number of bytes the spans cover, in file
// order; at the end of the file it is short with io.EOF. The caller
// must Release the spans (ReleaseSpans) once it has used their bytes, and
// should hold them only that long: a pinned page cannot be evicted. On
// any other error no span is added. Sequential callers get readahead, as
// with ReadAt.
func (r *Reader) ReadSpans(ctx context.Context, off uint64, scratch []byte, spans []Span) ([]Span, int, error) {
	fs, f := r.x.fs, r.h.file
	f.mu.RLock()
	defer f.mu.RUnlock()
	if off >= f.size {
		return spans, 0, io.EOF
	}
	n := min(uint64(len(scratch)), f.size-off)
	access := cache.AccessRandom
	if fs.observeRead(r.h, f, off, n) {
		access = cache.AccessSequential
	}
	pp, _ := fs.cache.(pagePinner)
	first := len(spans)
	s := spanAppender{spans: spans, scratch: scratch, copyFrom: -1}
	bs, ps := fs.blockSize, fs.pageSize
	for pos := uint64(0); pos < n; {
		cur := off + pos
		bi, boff := cur/bs, cur%bs
		// One page (or less) at a time: a page is pinned or copied whole.
		chunk := min(n-pos, ps-boff%ps)
		dst := scratch[pos : pos+chunk]
		if d := f.dirty[bi]; d != nil {
			copy(dst, d.buf[boff:])
			s.copied(pos, chunk)
		} else if ref, ok := f.blocks[bi]; ok && ref.ID != 0 {
			pi, poff := boff/ps, boff%ps
			blen := uint64(ref.Len)
			pinned := false
			if pageStart := pi * ps; pp != nil && pageStart < blen {
				valid := min(ps, blen-pageStart)
				if poff+chunk <= valid {
					var p cache.PinnedPage
					if p, pinned = pp.PinPage(ctx, cache.PageKey{Block: uint64(ref.ID), Index: uint32(pi)}, int(valid)); pinned {
						s.pinned(p, poff, chunk)
					}
				}
			}
			if !pinned {
				if err := fs.readBlock(ctx, ref, boff, dst, access); err != nil {
					ReleaseSpans(s.spans[first:])
					return s.spans[:first], 0, fmt.Errorf("read inode %d at %d: %w", r.attr.Ino, cur, err)
				}
				s.copied(pos, chunk)
			}
		} else {
			clear(dst)
			s.copied(pos, chunk)
		}
		pos += chunk
	}
	if n < uint64(len(scratch)) {
		return s.spans, int(n), io.EOF
	}
	return s.spans, int(n), nil
}

// spanAppender builds the spans of one ReadSpans call.
type spanAppender struct {
	spans   []Span
	scratch []byte
	// copyFrom is the scratch offset where the last span starts if it is
	// a copy (-1: it is not), so that the next copy extends it.
	copyFrom int64
}

// copied adds scratch[pos:pos+n], merging it into a copy span just before.
func (a *spanAppender) copied(pos, n uint64) {
	if a.copyFrom >= 0 {
		a.spans[len(a.spans)-1].Data = a.scratch[a.copyFrom : pos+n]
		return
	}
	a.copyFrom = int64(pos)
	a.spans = append(a.spans, Span{Data: a.scratch[pos : pos+n]})
}

// pinned adds bytes [poff, poff+n) of pinned page p.
func (a *spanAppender) pinned(p cache.PinnedPage, poff, n uint64) {
	a.copyFrom = -1
	a.spans = append(a.spans, Span{Data: p.Bytes()[poff : poff+n], pin: p})
}
