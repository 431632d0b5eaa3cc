package cache

import (
	"context"
	"time"
)

// pageHolder is a Tier that can tell, without I/O and without touching
// its eviction policy, whether it holds a page.
type pageHolder interface {
	Contains(key PageKey) bool
}

// Contains reports whether the disk tier holds page key or has it queued
// for writing. It does no I/O and is not an access for the policy.
func (t *DiskTier) Contains(key PageKey) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return false
	}
	if _, ok := t.index[key]; ok {
		return true
	}
	_, queued := t.pending[key]
	return queued
}

// cached reports whether the memory tier, or a later tier that can tell
// cheaply (pageHolder), holds page key. Prefetch skips such pages: after
// a restart with a warm disk tier, readahead must not GET from the store
// what the disk tier serves.
func (c *Cache) cached(key PageKey) bool {
	if c.memory.contains(key) {
		return true
	}
	for _, t := range c.tiers[1:] {
		if h, ok := t.(pageHolder); ok && h.Contains(key) {
			return true
		}
	}
	return false
}

// writeWaiter is a Tier whose Put declines a page when its write queue is
// full (the disk tier). WaitWritable waits until the queue has room.
type writeWaiter interface {
	WaitWritable(ctx context.Context) error
}

// WaitWritable waits until a write buffer is free (a Put would queue its
// page rather than drop it) or ctx ends. It polls the free list rather
// than taking a buffer, so that waiters never steal the buffer a Put is
// about to take; another Put may still take it first.
func (t *DiskTier) WaitWritable(ctx context.Context) error {
	delay := 50 * time.Microsecond
	for len(t.wfree) == 0 {
		timer := time.NewTimer(delay)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		}
		delay = min(2*delay, 2*time.Millisecond)
	}
	return nil
}

// waitingPutter is a Tier with a Put for the write path that waits for
// queue room rather than dropping the page (the neighbor tier's offers).
type waitingPutter interface {
	PutWait(ctx context.Context, key PageKey, data []byte, access Access) error
}

// maxOfferWait bounds how long offerWait waits for a tier's write queue
// for one page.
const maxOfferWait = 10 * time.Second

// offerWait offers a page of the write path to a tier and, when the tier
// dropped it for lack of queue space (it can tell: pageHolder and
// writeWaiter), waits for room and offers it again. Unlike the read-miss
// path, which must never wait for the disk, new data is worth the wait:
// writers are throttled to the cache device's speed instead of leaving
// what they wrote uncached (and a restarted node cold).
func (c *Cache) offerWait(ctx context.Context, t Tier, key PageKey, data []byte, access Access) {
	if wp, ok := t.(waitingPutter); ok { // it bounds its own wait
		if err := wp.PutWait(ctx, key, data, access); err != nil {
			c.log.Warn("cache tier put failed", "tier", t.Name(), "block", key.Block, "page", key.Index, "err", err)
		}
		return
	}
	h, holds := t.(pageHolder)
	w, waits := t.(writeWaiter)
	var deadline time.Time
	for {
		c.offer(ctx, t, key, data, access)
		if !holds || !waits || h.Contains(key) {
			return
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(maxOfferWait)
		} else if time.Now().After(deadline) {
			return
		}
		wctx, cancel := context.WithDeadline(ctx, deadline)
		err := w.WaitWritable(wctx)
		cancel()
		if err != nil {
			return
		}
	}
}
