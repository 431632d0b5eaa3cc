package fs

import (
	"context"
	"fmt"
	"sync"

	"github.com/datenlord/datenlord-go/meta"
)

// idRange is how many block ids are reserved from meta at a time.
const idRange = 64

// idAllocator hands out fresh block ids from ranges reserved in meta, and
// tracks the ids of flushes that have not committed yet.
type idAllocator struct {
	md Metadata

	mu       sync.Mutex
	next     meta.BlockID
	end      meta.BlockID
	inflight map[meta.BlockID]struct{}
}

func newIDAllocator(md Metadata) *idAllocator {
	return &idAllocator{md: md, inflight: make(map[meta.BlockID]struct{})}
}

// alloc returns n fresh ids, marked in flight until done.
func (a *idAllocator) alloc(ctx context.Context, n int) ([]meta.BlockID, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	ids := make([]meta.BlockID, 0, n)
	for len(ids) < n {
		if a.next == a.end {
			want := max(uint64(idRange), uint64(n-len(ids)))
			first, err := a.md.AllocBlocks(ctx, want)
			if err != nil {
				return nil, fmt.Errorf("allocate block ids: %w", err)
			}
			a.next, a.end = first, first+meta.BlockID(want)
		}
		ids = append(ids, a.next)
		a.inflight[a.next] = struct{}{}
		a.next++
	}
	return ids, nil
}

// done ends the in-flight period of ids (committed or abandoned: an
// abandoned block that reached the store is found by the store sweep).
func (a *idAllocator) done(ids []meta.BlockID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, id := range ids {
		delete(a.inflight, id)
	}
}

func (a *idAllocator) inFlight(fn func(meta.BlockID)) {
	a.mu.Lock()
	ids := make([]meta.BlockID, 0, len(a.inflight))
	for id := range a.inflight {
		ids = append(ids, id)
	}
	a.mu.Unlock()
	for _, id := range ids {
		fn(id)
	}
}

// dirtyBudget bounds the bytes of dirty blocks held on this node.
type dirtyBudget struct {
	mu    sync.Mutex
	limit int64
	used  int64
}

func newDirtyBudget(limit int64) *dirtyBudget { return &dirtyBudget{limit: limit} }

func (b *dirtyBudget) tryAcquire(n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if n > 0 && b.used+n > b.limit {
		return false
	}
	b.used += n
	return true
}

func (b *dirtyBudget) release(n int64) {
	b.mu.Lock()
	b.used -= n
	b.mu.Unlock()
}

func (b *dirtyBudget) inUse() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used
}
