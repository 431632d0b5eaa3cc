package cache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sync"
)

// Serve registers the neighbor tier's handlers on its transport, serving
// peers from c (the Cache the tier was passed to). Call it once, after
// New; until then peers' requests fail and they read elsewhere.
func (n *NeighborTier) Serve(c *Cache) error {
	if c == nil || c.cfg.PageSize != n.cfg.PageSize {
		return errors.New("cache neighbor serve: nil cache or a page size that differs from the tier's")
	}
	if n.cfg.ReadOnly {
		return errors.New("cache neighbor serve: a read-only tier serves no pages")
	}
	n.mu.Lock()
	if n.cache != nil {
		n.mu.Unlock()
		return errors.New("cache neighbor serve: already serving")
	}
	n.cache = c
	n.serving.Store(c)
	n.mu.Unlock()
	n.tr.Handle(opPing, func(context.Context, string, []byte) ([]byte, error) { return nil, nil })
	if n.fast != nil {
		n.fast.HandleInlineSend(opReadPage, respHeaderSize, n.readPageInline, n.releasePage, n.handleReadPage)
	} else {
		n.tr.Handle(opReadPage, n.handleReadPage)
	}
	n.tr.Handle(opPutPage, n.handlePutPage)
	n.tr.Handle(opLocate, n.handleLocate)
	n.tr.Handle(opWarmBlock, n.handleWarmBlock)
	n.tr.Handle(opLookup, n.handleLookup)
	return nil
}

// serving returns the Cache being served, or an error before Serve.
func (n *NeighborTier) served() (*Cache, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cache == nil {
		return nil, errors.New("cache neighbor: not serving yet")
	}
	return n.cache, nil
}

// handleReadPage serves opReadPage: from the memory arena when the slot
// checks out, else (length known) by filling from persistence: the whole
// block at its coordinator for sequential readers, the page alone (single
// flight through Cache.ReadPage) for random ones. A fill that fails is a
// miss: the reader then reads the store itself and sees the real error.
func (n *NeighborTier) handleReadPage(ctx context.Context, peer string, req []byte) ([]byte, error) {
	c, err := n.served()
	if err != nil {
		return nil, err
	}
	r, err := decodeReadReq(req, n.cfg.PageSize)
	if err != nil {
		return nil, fmt.Errorf("read page request from %s: %w", peer, err)
	}
	ctx = servingCtx(ctx)
	resp := make([]byte, respHeaderSize+n.cfg.PageSize)
	page := resp[respHeaderSize:]
	if got, crc, loc, ok := c.memory.getLocated(r.key, page); ok && (r.length == 0 || got == int(r.length)) {
		n.m.served.WithLabelValues("memory").Inc()
		encodeReadRespHeader(resp, readResp{status: statusOK, hasLoc: true, length: uint32(got), crc: crc, loc: loc})
		return resp[:respHeaderSize+got], nil
	}
	miss := func() ([]byte, error) {
		encodeReadRespHeader(resp, readResp{status: statusMiss})
		return resp[:respHeaderSize], nil
	}
	if r.length == 0 {
		return miss()
	}
	length := int(r.length)
	got, err := n.fill(ctx, c, r, page)
	if err != nil {
		n.log.Debug("page fill for a neighbor failed; answering a miss", "peer", peer, "block", r.key.Block, "page", r.key.Index, "err", err)
		return miss()
	}
	if got != length {
		return miss()
	}
	n.m.served.WithLabelValues("fill").Inc()
	encodeReadRespHeader(resp, readResp{status: statusOK, length: uint32(got), crc: crc32.Checksum(page[:got], n.crc)})
	return resp[:respHeaderSize+got], nil
}

// handleLookup serves opLookup: where the page's slot is in the memory
// arena, for the reader's one-sided read. A page not in memory is filled
// exactly as for opReadPage (and so cached here); a page that then still
// has no slot (the memory tier did not take it, or the fill failed) is a
// miss, and the reader falls back to opReadPage.
func (n *NeighborTier) handleLookup(ctx context.Context, peer string, req []byte) ([]byte, error) {
	c, err := n.served()
	if err != nil {
		return nil, err
	}
	r, err := decodeLookupReq(req, n.cfg.PageSize)
	if err != nil {
		return nil, fmt.Errorf("lookup request from %s: %w", peer, err)
	}
	resp := make([]byte, respHeaderSize)
	if crc, loc, ok := c.memory.locate(r.key); ok && loc.Length == r.length {
		n.m.served.WithLabelValues("memory").Inc()
		encodeReadRespHeader(resp, readResp{status: statusOK, hasLoc: true, length: loc.Length, crc: crc, loc: loc})
		return resp, nil
	}
	bp := n.bufs.Get().(*[]byte)
	defer n.bufs.Put(bp)
	got, err := n.fill(servingCtx(ctx), c, r, (*bp)[:n.cfg.PageSize])
	if err == nil && got == int(r.length) {
		if crc, loc, ok := c.memory.locate(r.key); ok && loc.Length == r.length {
			n.m.served.WithLabelValues("fill").Inc()
			encodeReadRespHeader(resp, readResp{status: statusOK, hasLoc: true, length: loc.Length, crc: crc, loc: loc})
			return resp, nil
		}
	} else if err != nil {
		n.log.Debug("page fill for a neighbor's lookup failed; answering a miss", "peer", peer, "block", r.key.Block, "page", r.key.Index, "err", err)
	}
	encodeReadRespHeader(resp, readResp{status: statusMiss})
	return resp, nil
}

// readPageInline is the transport's inline fast path of opReadPage: a page
// held in the memory arena, sent from its slot (pinned until the
// transport calls releasePage with the returned token, so the slot is not
// reused meanwhile) behind a response header built in dst, with the
// slot's stored CRC-32C, not rehashed: the reader verifies it against the
// bytes it receives (corruption anywhere, the arena included, is a miss
// there). The page is neither copied nor hashed at the owner. Anything
// else (a malformed request, a miss that needs a fill) goes to
// handleReadPage.
func (n *NeighborTier) readPageInline(_ string, req, dst []byte) (head, body []byte, token uint64, ok bool) {
	c := n.serving.Load()
	if c == nil || len(dst) < respHeaderSize {
		return nil, nil, 0, false
	}
	r, err := decodeReadReq(req, n.cfg.PageSize)
	if err != nil {
		return nil, nil, 0, false
	}
	page, s, crc, loc, ok := c.memory.pinLocated(r.key)
	if !ok {
		return nil, nil, 0, false
	}
	if r.length != 0 && len(page) != int(r.length) {
		c.memory.unpin(s)
		return nil, nil, 0, false
	}
	n.m.servedMemory.Inc()
	encodeReadRespHeader(dst, readResp{status: statusOK, hasLoc: true, length: uint32(len(page)), crc: crc, loc: loc})
	return dst[:respHeaderSize], page, uint64(s), true
}

// releasePage unpins the slot readPageInline sent a page from.
func (n *NeighborTier) releasePage(token uint64) {
	if c := n.serving.Load(); c != nil {
		c.memory.unpin(int32(token))
	}
}

// fill reads a page this node serves but does not hold (ctx is a serving
// ctx, so the Cache's own neighbor tier stays out of it).
func (n *NeighborTier) fill(ctx context.Context, c *Cache, r readReq, dst []byte) (int, error) {
	length := int(r.length)
	if r.flags&readSequential != 0 {
		live := n.liveNodes()
		coord, _ := hrwOwner(live, blockKey(r.key.Block))
		if r.flags&readCoordinate != 0 || coord.ID == n.cfg.Self {
			block, _, err := n.fillBlock(ctx, r.key.Block, r.key.Index, true)
			if err == nil {
				off := int(r.key.Index) * n.cfg.PageSize
				if off+length <= len(block) {
					return copy(dst, block[off:off+length]), nil
				}
				err = fmt.Errorf("%w: block 0x%016x has %d bytes, page %d needs %d", ErrShortPage, r.key.Block, len(block), r.key.Index, off+length)
			}
			n.log.Debug("block fill failed; filling the page alone", "block", r.key.Block, "err", err)
		} else {
			// Ask the coordinator, which fills the block once for the
			// cluster; keep the page, we own it.
			got, ok := n.readRemote(ctx, coord, r.key, length, dst, readSequential|readCoordinate)
			if ok {
				n.putLocal(ctx, c, r.key, dst[:got], AccessSequential)
				return got, nil
			}
		}
	}
	return c.ReadPage(ctx, r.key, length, dst, AccessRandom)
}

// blockFill is one whole-block read from persistence that concurrent
// fills of the block share; data is immutable once done is closed.
type blockFill struct {
	done chan struct{}
	data []byte
	err  error
}

// fillBlock reads a whole block from persistence with one ranged GET
// (single flight per block), caches every page here and, with offer set,
// offers each page to its owner (asynchronously; the queue may drop).
// fetched reports whether this call did the GET. A page already in memory
// costs nothing: index names the page the caller wants. A caller that
// sends the pages itself (warmLocal) passes offer false; a fill it shares
// with another caller offers as the one that started it asked.
func (n *NeighborTier) fillBlock(ctx context.Context, block uint64, index uint32, offer bool) (data []byte, fetched bool, err error) {
	c, err := n.served()
	if err != nil {
		return nil, false, err
	}
	n.fillMu.Lock()
	if f := n.fills[block]; f != nil {
		n.fillMu.Unlock()
		select {
		case <-f.done:
			return f.data, false, f.err
		case <-ctx.Done():
			return nil, false, fmt.Errorf("wait for the fill of block 0x%016x: %w", block, ctx.Err())
		}
	}
	f := &blockFill{done: make(chan struct{})}
	n.fills[block] = f
	n.fillMu.Unlock()

	// The fill serves every waiter: it outlives a caller that gives up.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), n.cfg.FillTimeout)
	buf := make([]byte, n.cfg.BlockSize)
	got, err := c.backend.ReadAt(fctx, block, 0, buf)
	cancel()
	switch {
	case err != nil:
		f.err = fmt.Errorf("fill block 0x%016x: %w", block, err)
	case got <= int(index)*n.cfg.PageSize:
		f.err = fmt.Errorf("fill block 0x%016x: %w: %d bytes, page %d wanted", block, ErrShortPage, got, index)
	default:
		f.data = buf[:got]
		sctx := servingCtx(ctx)
		live := n.liveNodes()
		ps := n.cfg.PageSize
		for off, idx := 0, uint32(0); off < got; off, idx = off+ps, idx+1 {
			key := PageKey{Block: block, Index: idx}
			page := f.data[off:min(off+ps, got)]
			n.putLocal(sctx, c, key, page, AccessSequential)
			if !offer {
				continue
			}
			if owner, _ := hrwOwner(live, key); owner.ID != n.cfg.Self {
				n.enqueue(owner, key, page)
			}
		}
	}
	n.fillMu.Lock()
	delete(n.fills, block)
	n.fillMu.Unlock()
	close(f.done)
	return f.data, true, f.err
}

// putLocal offers a page to this node's own tiers (not the neighbor tier).
func (n *NeighborTier) putLocal(ctx context.Context, c *Cache, key PageKey, data []byte, access Access) {
	for _, t := range c.tiers {
		if t != Tier(n) {
			c.offer(ctx, t, key, data, access)
		}
	}
}

// handlePutPage serves opPutPage: a page offered by the node that wrote
// or fetched it. The CRC is checked before the page is cached.
func (n *NeighborTier) handlePutPage(ctx context.Context, peer string, req []byte) ([]byte, error) {
	c, err := n.served()
	if err != nil {
		return nil, err
	}
	key, data, err := decodePutReq(req, n.cfg.PageSize, n.crc)
	if err != nil {
		return nil, fmt.Errorf("put page request from %s: %w", peer, err)
	}
	n.putLocal(servingCtx(ctx), c, key, data, AccessRandom)
	return nil, nil
}

// handleLocate serves opLocate: which of the pages this node holds in
// memory and on disk (no I/O, no policy touches).
func (n *NeighborTier) handleLocate(_ context.Context, peer string, req []byte) ([]byte, error) {
	c, err := n.served()
	if err != nil {
		return nil, err
	}
	keys, err := decodeLocateReq(req)
	if err != nil {
		return nil, fmt.Errorf("locate request from %s: %w", peer, err)
	}
	return encodeLocateResp(n.localStates(c, keys)), nil
}

func (n *NeighborTier) localStates(c *Cache, keys []PageKey) []uint8 {
	states := make([]uint8, len(keys))
	for i, k := range keys {
		if c.memory.contains(k) {
			states[i] |= locMemory
		}
		for _, t := range c.tiers[1:] {
			if t == Tier(n) {
				continue
			}
			if h, ok := t.(pageHolder); ok && h.Contains(k) {
				states[i] |= locDisk
			}
		}
	}
	return states
}

// handleWarmBlock serves opWarmBlock at a block's coordinator: pages
// their owners already hold are left alone, the block is read once if
// any other page is missing (unless this node holds all of it in memory)
// and every missing page is sent to its owner, waiting for each, so that
// a warm-up leaves the data where readers will look for it.
func (n *NeighborTier) handleWarmBlock(ctx context.Context, peer string, req []byte) ([]byte, error) {
	block, blockLen, err := decodeWarmReq(req, n.cfg.BlockSize)
	if err != nil {
		return nil, fmt.Errorf("warm request from %s: %w", peer, err)
	}
	pages, fetched, err := n.warmLocal(servingCtx(ctx), block, blockLen)
	if err != nil {
		return nil, err
	}
	return encodeWarmResp(pages, fetched), nil
}

// warmLocal warms a block this node coordinates. It first asks each
// owner (one opLocate per owner) which of its pages it holds, in memory
// or on disk; when every page is held it neither reads the store nor
// sends a page. Otherwise the block comes from this node's memory or one
// fill, and only the pages whose owners lack them are sent.
func (n *NeighborTier) warmLocal(ctx context.Context, block uint64, blockLen int) (int, bool, error) {
	c, err := n.served()
	if err != nil {
		return 0, false, err
	}
	ps := n.cfg.PageSize
	pages := (blockLen + ps - 1) / ps
	live := n.liveNodes()
	keys := make([]PageKey, pages)
	owners := make([]Node, pages)
	for i := range pages {
		keys[i] = PageKey{Block: block, Index: uint32(i)}
		owners[i], _ = hrwOwner(live, keys[i])
	}
	held := n.ownersHold(ctx, c, block, keys, owners)
	missing := 0
	for _, h := range held {
		if !h {
			missing++
		}
	}
	if missing == 0 {
		return pages, false, nil
	}
	data := make([]byte, blockLen)
	have := true
	for i := 0; i < pages && have; i++ {
		off := i * ps
		got, ok, _ := c.memory.Get(ctx, keys[i], data[off:min(off+ps, blockLen)])
		have = ok && got == min(ps, blockLen-off)
	}
	fetched := false
	if !have {
		var filled []byte
		if filled, fetched, err = n.fillBlock(ctx, block, uint32(pages-1), false); err != nil {
			return 0, false, err
		}
		if len(filled) < blockLen {
			return 0, false, fmt.Errorf("warm block 0x%016x: %w: %d of %d bytes", block, ErrShortPage, len(filled), blockLen)
		}
		data = filled[:blockLen]
	}
	var wg sync.WaitGroup
	errs := make([]error, pages)
	for i := range pages {
		if held[i] || owners[i].ID == n.cfg.Self {
			continue // its owner has it, or fillBlock or the memory tier has it here
		}
		page := data[i*ps : min((i+1)*ps, blockLen)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = n.putRemote(ctx, owners[i], keys[i], page)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return pages, fetched, fmt.Errorf("warm block 0x%016x: %w", block, err)
	}
	return pages, fetched, nil
}

// ownersHold reports, per key, whether owners[i] (this node included)
// holds keys[i] in memory or on disk, asking each owner once (in
// parallel, each call bounded by CallTimeout). An owner that cannot be
// asked holds nothing: its pages are then warmed as if missing.
func (n *NeighborTier) ownersHold(ctx context.Context, c *Cache, block uint64, keys []PageKey, owners []Node) []bool {
	held := make([]bool, len(keys))
	byOwner := make(map[string][]int)
	nodes := make(map[string]Node)
	for i, o := range owners {
		byOwner[o.ID] = append(byOwner[o.ID], i)
		nodes[o.ID] = o
	}
	var wg sync.WaitGroup
	for id, idx := range byOwner {
		ks := make([]PageKey, len(idx))
		for j, i := range idx {
			ks[j] = keys[i]
		}
		if id == n.cfg.Self {
			for j, s := range n.localStates(c, ks) {
				held[idx[j]] = s != 0
			}
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, n.cfg.CallTimeout)
			defer cancel()
			states, err := n.locateAt(cctx, nodes[id], ks)
			if err != nil {
				n.log.Debug("locate for a warm-up failed; its pages are warmed as missing", "peer", id, "block", block, "err", err)
				return
			}
			for j, s := range states {
				held[idx[j]] = s != 0 // distinct indices per owner: no race
			}
		}()
	}
	wg.Wait()
	return held
}

// putRemote sends one page to node and waits for it to be taken.
func (n *NeighborTier) putRemote(ctx context.Context, node Node, key PageKey, page []byte) error {
	buf := make([]byte, putReqSize+len(page))
	copy(buf[putReqSize:], page)
	encodePutReq(buf, key, crc32.Checksum(page, n.crc), len(page))
	cctx, cancel := context.WithTimeout(ctx, n.cfg.CallTimeout)
	defer cancel()
	if _, err := n.tr.CallInto(cctx, node.Addr, opPutPage, buf, nil); err != nil {
		n.callFailed(ctx, node, err)
		return fmt.Errorf("offer block 0x%016x page %d to %s: %w", key.Block, key.Index, node.ID, err)
	}
	return nil
}

// WarmBlock loads a block of blockLen bytes into the cluster cache: its
// coordinator reads it from persistence (at most once) and hands every
// page to its owner. fetched reports whether a store read was needed.
func (n *NeighborTier) WarmBlock(ctx context.Context, block uint64, blockLen int) (pages int, fetched bool, err error) {
	if blockLen <= 0 || blockLen > n.cfg.BlockSize {
		return 0, false, fmt.Errorf("warm block 0x%016x: length %d outside 1..%d", block, blockLen, n.cfg.BlockSize)
	}
	live := n.liveNodes()
	coord, _ := hrwOwner(live, blockKey(block))
	if coord.ID == n.cfg.Self {
		return n.warmLocal(ctx, block, blockLen)
	}
	resp, err := n.tr.CallInto(ctx, coord.Addr, opWarmBlock, encodeWarmReq(block, blockLen), nil)
	if err != nil {
		return 0, false, fmt.Errorf("warm block 0x%016x at %s: %w", block, coord.ID, err)
	}
	pages, fetched, err = decodeWarmResp(resp, n.cfg.BlockSize/n.cfg.PageSize)
	if err != nil {
		return 0, false, fmt.Errorf("warm block 0x%016x at %s: %w", block, coord.ID, err)
	}
	return pages, fetched, nil
}

// PageState says where one node holds a page.
type PageState struct {
	Memory bool
	Disk   bool
}

// Locate asks every cache node (this one included, down ones too) which
// of keys it holds in memory and on disk. The result maps node id to one
// state per key; a node that cannot be asked is in errs.
func (n *NeighborTier) Locate(ctx context.Context, keys []PageKey) (states map[string][]PageState, errs map[string]error) {
	states = make(map[string][]PageState)
	errs = make(map[string]error)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, nd := range n.cfg.Membership.Nodes() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			raw, err := n.locateAt(ctx, nd, keys)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs[nd.ID] = err
				return
			}
			out := make([]PageState, len(raw))
			for i, s := range raw {
				out[i] = PageState{Memory: s&locMemory != 0, Disk: s&locDisk != 0}
			}
			states[nd.ID] = out
		}()
	}
	wg.Wait()
	return states, errs
}

func (n *NeighborTier) locateAt(ctx context.Context, nd Node, keys []PageKey) ([]uint8, error) {
	if nd.ID == n.cfg.Self {
		c, err := n.served()
		if err != nil {
			return nil, err
		}
		return n.localStates(c, keys), nil
	}
	var out []uint8
	for start := 0; start < len(keys); start += maxLocate {
		chunk := keys[start:min(start+maxLocate, len(keys))]
		resp, err := n.tr.CallInto(ctx, nd.Addr, opLocate, encodeLocateReq(chunk), nil)
		if err != nil {
			return nil, fmt.Errorf("locate %d pages at %s: %w", len(chunk), nd.ID, err)
		}
		st, err := decodeLocateResp(resp, len(chunk))
		if err != nil {
			return nil, fmt.Errorf("locate %d pages at %s: %w", len(chunk), nd.ID, err)
		}
		out = append(out, st...)
	}
	return out, nil
}

// Owners returns the current owner of each key among the live nodes.
func (n *NeighborTier) Owners(keys []PageKey) []Node {
	live := n.liveNodes()
	out := make([]Node, len(keys))
	for i, k := range keys {
		out[i], _ = hrwOwner(live, k)
	}
	return out
}

// Nodes returns the cache nodes (from Membership).
func (n *NeighborTier) Nodes() []Node { return n.cfg.Membership.Nodes() }

// getLocated is Get that also returns the slot's CRC and location (for a
// neighbor's later one-sided reads). The header is checked as in Get.
func (t *memoryTier) getLocated(key PageKey, dst []byte) (int, uint32, SlotLocation, bool) {
	return t.copyLocated(key, dst, true)
}

// locate returns the CRC and location of a page's slot without copying
// the page; the header (key, length, generation) is checked, the page
// against its CRC is not: the one-sided reader checks it.
func (t *memoryTier) locate(key PageKey) (uint32, SlotLocation, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	s, ok := t.index[key]
	if !ok || t.closed {
		return 0, SlotLocation{}, false
	}
	seg, _, off := t.slotLoc(s)
	n := int(t.lens[s])
	t.policy.Touch(s, AccessRandom)
	gen := t.gens[s]
	hdr := seg.mem[off : off+slotHeaderSize]
	if binary.LittleEndian.Uint64(hdr[hdrBlock:]) != key.Block ||
		binary.LittleEndian.Uint32(hdr[hdrIndex:]) != key.Index ||
		binary.LittleEndian.Uint32(hdr[hdrLength:]) != uint32(n) ||
		binary.LittleEndian.Uint64(hdr[hdrGeneration:]) != gen {
		return 0, SlotLocation{}, false
	}
	crc := binary.LittleEndian.Uint32(hdr[hdrChecksum:])
	return crc, SlotLocation{Segment: uint32(s / t.slotsPerSeg), Offset: uint64(off), Generation: gen, Length: uint32(n)}, true
}

// pinLocated pins the slot of a page and returns its page bytes (in the
// arena: valid and unchanged until unpin(s)) with the slot's CRC and
// location. The header (key, length, generation) is checked, the page
// against its CRC is not: for a sender whose receiver verifies that CRC.
// A slot whose header does not check out is dropped (a miss).
func (t *memoryTier) pinLocated(key PageKey) (page []byte, s int32, crc uint32, loc SlotLocation, ok bool) {
	t.mu.Lock()
	s, ok = t.index[key]
	if !ok || t.closed {
		t.mu.Unlock()
		return nil, 0, 0, SlotLocation{}, false
	}
	seg, i, off := t.slotLoc(s)
	n := int(t.lens[s])
	seg.refs[i].Add(1)
	t.policy.Touch(s, AccessRandom)
	gen := t.gens[s]
	t.mu.Unlock()

	hdr := seg.mem[off : off+slotHeaderSize]
	if binary.LittleEndian.Uint64(hdr[hdrBlock:]) != key.Block ||
		binary.LittleEndian.Uint32(hdr[hdrIndex:]) != key.Index ||
		binary.LittleEndian.Uint32(hdr[hdrLength:]) != uint32(n) ||
		binary.LittleEndian.Uint64(hdr[hdrGeneration:]) != gen {
		seg.refs[i].Add(-1)
		t.dropCorrupt(key, s, gen)
		return nil, 0, 0, SlotLocation{}, false
	}
	crc = binary.LittleEndian.Uint32(hdr[hdrChecksum:])
	loc = SlotLocation{Segment: uint32(s / t.slotsPerSeg), Offset: uint64(off), Generation: gen, Length: uint32(n)}
	return seg.mem[off+slotHeaderSize : off+slotHeaderSize+n], s, crc, loc, true
}

// unpin releases a pin of pinLocated. Lock-free: a pinned slot's segment
// is set for good.
func (t *memoryTier) unpin(s int32) {
	seg, i, _ := t.slotLoc(s)
	seg.refs[i].Add(-1)
}

// copyLocated is getLocated that, with verify false, checks the slot
// header (key, length, generation) but not the page against its CRC: for
// a copy whose receiver verifies that CRC itself.
func (t *memoryTier) copyLocated(key PageKey, dst []byte, verify bool) (int, uint32, SlotLocation, bool) {
	t.mu.Lock()
	s, ok := t.index[key]
	if !ok || t.closed {
		t.mu.Unlock()
		return 0, 0, SlotLocation{}, false
	}
	seg, i, off := t.slotLoc(s)
	n := int(t.lens[s])
	if len(dst) < n {
		t.mu.Unlock()
		return 0, 0, SlotLocation{}, false
	}
	seg.refs[i].Add(1)
	t.policy.Touch(s, AccessRandom)
	gen := t.gens[s]
	t.mu.Unlock()

	hdr := seg.mem[off : off+slotHeaderSize]
	copy(dst[:n], seg.mem[off+slotHeaderSize:off+slotHeaderSize+n])
	crc := binary.LittleEndian.Uint32(hdr[hdrChecksum:])
	good := binary.LittleEndian.Uint64(hdr[hdrBlock:]) == key.Block &&
		binary.LittleEndian.Uint32(hdr[hdrIndex:]) == key.Index &&
		binary.LittleEndian.Uint32(hdr[hdrLength:]) == uint32(n) &&
		binary.LittleEndian.Uint64(hdr[hdrGeneration:]) == gen &&
		(!verify || crc == crc32.Checksum(dst[:n], t.crc))
	seg.refs[i].Add(-1)
	if !good {
		t.dropCorrupt(key, s, gen)
		return 0, 0, SlotLocation{}, false
	}
	loc := SlotLocation{Segment: uint32(s / t.slotsPerSeg), Offset: uint64(off), Generation: gen, Length: uint32(n)}
	return n, crc, loc, true
}
