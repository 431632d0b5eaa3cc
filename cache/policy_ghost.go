package cache

// ghostWays is the entries per ghost bucket.
const ghostWays = 4

// ghost remembers the fingerprints of recently evicted pages, without
// their slots or bytes. It is a fixed table of small buckets stamped with
// an insertion clock: an entry counts only while fewer than window newer
// entries were added after it, so the ghost behaves like a FIFO of the
// last window evictions without a queue to maintain, and it allocates only
// when resized. Bucket overflow forgets the oldest entry of the bucket
// early, which only costs a ghost hit.
type ghost struct {
	fps   []uint64 // 0: empty
	stamp []uint64
	mask  uint64 // buckets - 1
	clock uint64
}

// resize makes room for about 2*capacity entries, keeping what fits.
func (g *ghost) resize(capacity int) {
	buckets := 1
	for buckets*ghostWays < 2*capacity {
		buckets <<= 1
	}
	if buckets*ghostWays <= len(g.fps) {
		return
	}
	old, oldStamp := g.fps, g.stamp
	g.fps = make([]uint64, buckets*ghostWays)
	g.stamp = make([]uint64, buckets*ghostWays)
	g.mask = uint64(buckets - 1)
	for i, fp := range old {
		if fp != 0 {
			g.put(fp, oldStamp[i])
		}
	}
}

func (g *ghost) bucket(fp uint64) int { return int((fp>>32)&g.mask) * ghostWays }

// add remembers fp as the newest eviction.
func (g *ghost) add(fp uint64) {
	if len(g.fps) == 0 || fp == 0 {
		return
	}
	g.clock++
	g.put(fp, g.clock)
}

func (g *ghost) put(fp, stamp uint64) {
	b := g.bucket(fp)
	oldest := b
	for i := b; i < b+ghostWays; i++ {
		if g.fps[i] == fp || g.fps[i] == 0 {
			oldest = i
			break
		}
		if g.stamp[i] < g.stamp[oldest] {
			oldest = i
		}
	}
	g.fps[oldest], g.stamp[oldest] = fp, stamp
}

// take reports whether fp is among the last window evictions and forgets it.
func (g *ghost) take(fp uint64, window int) bool {
	if len(g.fps) == 0 || fp == 0 {
		return false
	}
	b := g.bucket(fp)
	for i := b; i < b+ghostWays; i++ {
		if g.fps[i] == fp {
			g.fps[i] = 0
			return g.clock-g.stamp[i] < uint64(window)
		}
	}
	return false
}

// pageFingerprint hashes a page key to a nonzero 64-bit fingerprint
// (splitmix64 finalizer).
func pageFingerprint(k PageKey) uint64 {
	x := k.Block*0x9e3779b97f4a7c15 ^ uint64(k.Index)
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x | 1
}
