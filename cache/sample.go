package cache

// MemoryPages returns the keys of up to max full-length pages held in the
// memory tier, in no particular order: the pages a reader can ask this
// node for (`bench tiers --addr` measures reading them). It takes the
// memory tier's lock for one pass over its index, so max bounds the
// pause.
func (c *Cache) MemoryPages(max int) []PageKey {
	t := c.memory
	if t == nil || max <= 0 {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]PageKey, 0, min(max, len(t.index)))
	for k, s := range t.index {
		if len(out) == max {
			break
		}
		if t.state[s] == slotValid && int(t.lens[s]) == t.pageSize {
			out = append(out, k)
		}
	}
	return out
}
