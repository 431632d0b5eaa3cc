package cache

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/datenlord/datenlord-go/iouring"
)

// The disk tier keeps pages in one preallocated file, DiskConfig.Dir/pages.dat:
//
//	[superblock 4 KiB][slot 0][slot 1]...      slot = [header 4 KiB][page PageSize]
//
// so every slot, header and page starts 4 KiB-aligned and a Put is one
// aligned O_DIRECT write of header and page together. The slot header is
// little endian:
//
//	 0  magic        uint32  diskSlotMagic
//	 4  version      uint16  diskFormatVersion
//	 6  reserved     uint16
//	 8  block id     uint64
//	16  page index   uint32
//	20  length       uint32  valid page bytes, 1..PageSize
//	24  generation   uint64  tier-wide write counter: newer wins at restart
//	32  data CRC     uint32  CRC-32C of the length page bytes
//	36  header CRC   uint32  CRC-32C of bytes [0, 36)
//
// The headers are read only when the index is rebuilt at open: the index
// keeps each slot's key, length, generation and data CRC in memory, so a
// Get reads the page bytes alone (4 KiB for a 4 KiB page, the I/O a raw
// random read would do) and verifies them against the indexed CRC.
//
// Crash consistency: a Put writes header and page in one aligned write,
// but the device may tear it (power loss between sectors) or reorder it.
// Every outcome is caught: a torn header fails its own CRC at rebuild and
// the slot is freed; a new header over an old or partial page, or an old
// header over a new page, indexes a data CRC the page bytes do not match,
// so the first Get drops the slot and misses. The header CRC covers the
// data CRC, so a bit flip there is a header failure, not a wrong CRC. A
// header corrupted while the tier runs is harmless until restart (Gets do
// not read it; the page itself is still verified) and is caught by the
// rebuild. The superblock records the page size, so a file written with
// another page size is reinitialised rather than misread.
const (
	diskFileName      = "pages.dat"
	diskBlockSize     = iouring.Alignment // header and superblock size; I/O alignment
	diskSlotMagic     = 0x47504c44        // "DLPG"
	diskSuperMagic    = 0x42534c44        // "DLSB"
	diskFormatVersion = 1

	dhMagic   = 0
	dhVersion = 4
	dhBlock   = 8
	dhIndex   = 16
	dhLength  = 20
	dhGen     = 24
	dhDataCRC = 32
	dhHdrCRC  = 36

	// superblock: magic u32, version u32, page size u32, reserved u32,
	// slots u64, CRC-32C of [0, 24) u32.
	sbMagic    = 0
	sbVersion  = 4
	sbPageSize = 8
	sbSlots    = 16
	sbCRC      = 24
)

// Defaults for DiskConfig.
const (
	DefaultDiskWriters     = 2
	DefaultDiskWriteQueue  = 64
	DefaultDiskReadBuffers = 64
	defaultScanParallelism = 32
)

// DiskConfig configures a DiskTier.
type DiskConfig struct {
	// Dir holds pages.dat; it is created if missing.
	Dir string
	// Bytes is the size of pages.dat, preallocated at open: superblock,
	// slot headers and pages. The tier holds (Bytes-4096)/(4096+PageSize)
	// pages.
	Bytes int64
	// PageSize is the page size, a positive multiple of 4096; it must match
	// the Cache's.
	PageSize int
	// Engine, if set, is a shared I/O engine that the tier uses but does
	// not close. The tier then does not register fixed buffers (a
	// registration is engine-wide and would replace another user's).
	Engine iouring.Engine
	// EngineKind opens the tier's own engine when Engine is nil: "auto"
	// (default), "uring" or "psync". The tier registers its buffer arena
	// with it and closes it on Close.
	EngineKind string
	// Policy returns the eviction policy (nil: LRU).
	Policy func() Policy
	// Writers is the number of goroutines writing queued pages (default 2).
	Writers int
	// WriteQueue bounds the pages waiting to be written (default 64); a Put
	// that finds the queue full drops the page and counts
	// datenlord_cache_write_drops_total.
	WriteQueue int
	// ReadBuffers bounds concurrent Gets doing I/O (default 64).
	ReadBuffers int
	// Registerer receives the metrics (nil: none are registered).
	Registerer prometheus.Registerer
	// Logger receives structured logs (nil: slog.Default()).
	Logger *slog.Logger
}

// DiskTier is the local NVMe tier: a cache.Tier of fixed-size slots in one
// O_DIRECT file, driven by an iouring.Engine.
//
// Get reads a slot's page bytes only (one I/O into a registered buffer)
// and verifies them against the CRC-32C the index holds for the slot
// (taken from the header at rebuild or computed at Put): a mismatch, or a
// short read, drops the slot, counts
// datenlord_cache_checksum_failures_total{tier="disk"} and is a miss,
// never wrong bytes. Put copies the page into a bounded write queue and
// returns: the read-miss path that offers pages to every tier never waits
// for the disk. A small pool of writers takes a slot (free, or the
// policy's victim) and writes it; a Get of a page still queued is served
// from the queue.
//
// The index is rebuilt at open by reading every slot header (in parallel
// through the engine), not persisted: the headers are the only truth, so
// a crash at any point leaves nothing to reconcile, and a page whose write
// was torn is caught by its checksums. The cost is one 4 KiB read per slot
// at start (1/17 of the file with 64 KiB pages) and 16 bytes of memory
// per slot beyond the key. Pages of a block removed
// by DropBlock keep their headers on disk and reappear in the index after
// a restart; block ids are never reused, so they are never read and age
// out through the policy.
//
// Hits and misses are counted by the Cache (per tier); the tier itself
// counts evictions, checksum failures, bytes held, read latency
// (datenlord_cache_read_duration_seconds{tier="disk"}), dropped and failed
// writes.
type DiskTier struct {
	cfg     DiskConfig
	log     *slog.Logger
	eng     iouring.Engine
	ownsEng bool
	fixed   bool // arena registered as fixed buffer 0 of eng
	direct  bool // pages.dat is open with O_DIRECT
	fd      int
	stride  int // diskBlockSize + PageSize
	nslots  int32
	crc     *crc32.Table
	m       tierMetrics
	dm      diskTierMetrics
	keyed   keyedInserter // the policy's InsertKey, if it has one

	arena    []byte          // read buffers (PageSize), then write buffers (stride) (AllocAligned)
	readBufs chan []byte     // free read buffers
	wfree    chan *diskWrite // free write buffers
	work     chan *diskWrite // queued writes; capacity = write buffers, so sends never block
	nextGen  atomic.Uint64   // generation of the next write
	writers  sync.WaitGroup  // writer goroutines
	ops      sync.WaitGroup  // Gets doing I/O
	refs     []atomic.Int32  // pins: a pinned slot is being read and is not reused

	closeMu   sync.Mutex // serialises Close
	closeDone bool
	closeErr  error

	mu      sync.Mutex // guards the fields below
	closed  bool
	index   map[PageKey]int32
	pending map[PageKey]*diskWrite
	keys    []PageKey
	lens    []int32
	gens    []uint64
	crcs    []uint32 // CRC-32C of the slot's page bytes, as in its header
	state   []uint8  // slotFree, slotFilling, slotValid, slotZombie (as in memory.go)
	free    []int32
	zombies []int32
	chains  blockChains
	policy  Policy
	bytes   int64
}

// keyedInserter is implemented by policies that want the page key at
// insert (ghost-keeping policies); the tier stays agnostic of which.
type keyedInserter interface {
	InsertKey(slot int32, key PageKey, access Access)
}

// diskWrite is one queued page: a slot image (header and page) in an
// aligned write buffer.
type diskWrite struct {
	buf     []byte // stride bytes of the arena
	key     PageKey
	n       int
	gen     uint64
	crc     uint32 // CRC-32C of the page bytes
	access  Access
	dropped bool // DropBlock ran while queued; guarded by DiskTier.mu
}

var _ Tier = (*DiskTier)(nil)

// NewDiskTier opens (or creates) the tier's file in cfg.Dir, preallocates
// it to cfg.Bytes and rebuilds the index from the slot headers, so a tier
// reopened over the same directory starts warm.
func NewDiskTier(ctx context.Context, cfg DiskConfig) (*DiskTier, error) {
	if cfg.PageSize <= 0 || cfg.PageSize%diskBlockSize != 0 {
		return nil, fmt.Errorf("cache disk tier: page size %d is not a positive multiple of %d", cfg.PageSize, diskBlockSize)
	}
	stride := diskBlockSize + cfg.PageSize
	nslots := (cfg.Bytes - diskBlockSize) / int64(stride)
	if cfg.Bytes <= 0 || nslots < 1 {
		return nil, fmt.Errorf("cache disk tier: %d bytes hold no %d-byte slot", cfg.Bytes, stride)
	}
	nslots = min(nslots, 1<<31-1)
	if cfg.Dir == "" {
		return nil, errors.New("cache disk tier: empty directory")
	}
	cfg.Writers = cmp.Or(cfg.Writers, DefaultDiskWriters)
	cfg.WriteQueue = cmp.Or(cfg.WriteQueue, DefaultDiskWriteQueue)
	cfg.ReadBuffers = cmp.Or(cfg.ReadBuffers, DefaultDiskReadBuffers)
	if cfg.Writers < 0 || cfg.WriteQueue < 0 || cfg.ReadBuffers < 0 {
		return nil, errors.New("cache disk tier: negative Writers, WriteQueue or ReadBuffers")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("tier", "disk")
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("cache disk tier: register metrics: %w", err)
	}
	dm, err := newDiskMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("cache disk tier: register metrics: %w", err)
	}
	var policy Policy = NewLRU()
	if cfg.Policy != nil {
		policy = cfg.Policy()
	}
	t := &DiskTier{
		cfg:     cfg,
		log:     log,
		fd:      -1,
		stride:  stride,
		nslots:  int32(nslots),
		crc:     crc32.MakeTable(crc32.Castagnoli),
		m:       m.forTier("disk"),
		dm:      dm.forTier("disk"),
		refs:    make([]atomic.Int32, nslots),
		index:   make(map[PageKey]int32),
		pending: make(map[PageKey]*diskWrite),
		keys:    make([]PageKey, nslots),
		lens:    make([]int32, nslots),
		gens:    make([]uint64, nslots),
		crcs:    make([]uint32, nslots),
		state:   make([]uint8, nslots),
		chains:  newBlockChains(int(nslots)),
		policy:  policy,
	}
	t.keyed, _ = policy.(keyedInserter)
	policy.Grow(int(nslots))
	if err := t.open(ctx); err != nil {
		t.release()
		return nil, err
	}
	for range cfg.Writers {
		t.writers.Go(t.writeLoop)
	}
	return t, nil
}

// open sets up engine, buffers and file, and rebuilds the index.
func (t *DiskTier) open(ctx context.Context) error {
	cfg := t.cfg
	t.eng = cfg.Engine
	if t.eng == nil {
		eng, err := iouring.Open(iouring.Config{Kind: cmp.Or(cfg.EngineKind, iouring.KindAuto), Logger: t.log})
		if err != nil {
			return fmt.Errorf("cache disk tier: %w", err)
		}
		t.eng, t.ownsEng = eng, true
	}
	// Read buffers hold a page (Gets read no header); write buffers a
	// whole slot image. Both sizes are multiples of diskBlockSize, so
	// every buffer is aligned.
	readBytes := cfg.ReadBuffers * cfg.PageSize
	arena, err := iouring.AllocAligned(max(readBytes+cfg.WriteQueue*t.stride, diskBlockSize))
	if err != nil {
		return fmt.Errorf("cache disk tier: buffer arena: %w", err)
	}
	t.arena = arena
	if t.ownsEng {
		if err := t.eng.RegisterBuffers([][]byte{arena}); err != nil {
			t.log.Warn("cannot register fixed buffers; using plain reads and writes", "err", err)
		} else {
			t.fixed = true
		}
	}
	t.readBufs = make(chan []byte, cfg.ReadBuffers)
	for i := range cfg.ReadBuffers {
		t.readBufs <- arena[i*cfg.PageSize : (i+1)*cfg.PageSize : (i+1)*cfg.PageSize]
	}
	t.wfree = make(chan *diskWrite, cfg.WriteQueue)
	t.work = make(chan *diskWrite, cfg.WriteQueue)
	for i := range cfg.WriteQueue {
		off := readBytes + i*t.stride
		t.wfree <- &diskWrite{buf: arena[off : off+t.stride : off+t.stride]}
	}

	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return fmt.Errorf("cache disk tier: create %s: %w", cfg.Dir, err)
	}
	path := filepath.Join(cfg.Dir, diskFileName)
	fd, direct, err := iouring.OpenDirect(path, unix.O_RDWR|unix.O_CREAT, 0o600, t.log)
	if err != nil {
		return fmt.Errorf("cache disk tier: %w", err)
	}
	t.fd, t.direct = fd, direct
	start := time.Now()
	scan, err := t.prepareFile(ctx, path)
	if err != nil {
		return err
	}
	if err := t.rebuild(ctx, scan); err != nil {
		return err
	}
	t.log.Info("disk cache tier open", "path", path, "engine", t.eng.Name(), "o_direct", t.direct, "fixed_buffers", t.fixed,
		"slots", t.nslots, "page_size", cfg.PageSize, "pages", len(t.index), "bytes", t.bytes, "took", time.Since(start))
	return nil
}

// prepareFile validates or writes the superblock and preallocates the
// file. It returns how many slots hold data worth scanning.
func (t *DiskTier) prepareFile(ctx context.Context, path string) (int32, error) {
	size := int64(diskBlockSize) + int64(t.nslots)*int64(t.stride)
	sb := t.arena[:diskBlockSize]
	var st unix.Stat_t
	if err := unix.Fstat(t.fd, &st); err != nil {
		return 0, fmt.Errorf("cache disk tier: stat %s: %w", path, err)
	}
	scan := int32(0)
	if st.Size >= diskBlockSize {
		if _, err := t.read(ctx, sb, 0); err != nil {
			return 0, fmt.Errorf("cache disk tier: read superblock of %s: %w", path, err)
		}
		le := binary.LittleEndian
		switch {
		case le.Uint32(sb[sbMagic:]) != diskSuperMagic || le.Uint32(sb[sbCRC:]) != crc32.Checksum(sb[:sbCRC], t.crc):
			t.log.Warn("disk cache file has no valid superblock; starting empty", "path", path)
		case le.Uint32(sb[sbVersion:]) != diskFormatVersion:
			t.log.Warn("disk cache file has another format version; starting empty", "path", path, "version", le.Uint32(sb[sbVersion:]))
		case int(le.Uint32(sb[sbPageSize:])) != t.cfg.PageSize:
			t.log.Warn("disk cache file was written with another page size; starting empty", "path", path,
				"file_page_size", le.Uint32(sb[sbPageSize:]), "page_size", t.cfg.PageSize)
		default:
			scan = int32(min(le.Uint64(sb[sbSlots:]), uint64(t.nslots)))
		}
	}
	if scan == 0 && st.Size > 0 {
		if err := unix.Ftruncate(t.fd, 0); err != nil { // drop old slots: their headers must not be scanned
			return 0, fmt.Errorf("cache disk tier: truncate %s: %w", path, err)
		}
	}
	if err := unix.Fallocate(t.fd, 0, 0, size); err != nil {
		if !errors.Is(err, unix.EOPNOTSUPP) {
			return 0, fmt.Errorf("cache disk tier: preallocate %d bytes for %s: %w", size, path, err)
		}
		t.log.Warn("file system cannot preallocate; the cache file is sparse and writes may fail with ENOSPC", "path", path)
	}
	if err := unix.Ftruncate(t.fd, size); err != nil { // shrink after a smaller Bytes; extend if sparse
		return 0, fmt.Errorf("cache disk tier: size %s to %d bytes: %w", path, size, err)
	}
	clear(sb)
	le := binary.LittleEndian
	le.PutUint32(sb[sbMagic:], diskSuperMagic)
	le.PutUint32(sb[sbVersion:], diskFormatVersion)
	le.PutUint32(sb[sbPageSize:], uint32(t.cfg.PageSize))
	le.PutUint64(sb[sbSlots:], uint64(t.nslots))
	le.PutUint32(sb[sbCRC:], crc32.Checksum(sb[:sbCRC], t.crc))
	if _, err := t.write(ctx, sb, 0); err != nil {
		return 0, fmt.Errorf("cache disk tier: write superblock of %s: %w", path, err)
	}
	if err := t.eng.Fdatasync(ctx, t.fd); err != nil {
		return 0, fmt.Errorf("cache disk tier: sync %s: %w", path, err)
	}
	return scan, nil
}

// slotHeader is a decoded, self-consistent slot header.
type slotHeader struct {
	key     PageKey
	length  int
	gen     uint64
	dataCRC uint32
}

// decodeHeader checks magic, version, header CRC and length.
func (t *DiskTier) decodeHeader(h []byte) (slotHeader, bool) {
	le := binary.LittleEndian
	if le.Uint32(h[dhMagic:]) != diskSlotMagic || le.Uint16(h[dhVersion:]) != diskFormatVersion ||
		le.Uint32(h[dhHdrCRC:]) != crc32.Checksum(h[:dhHdrCRC], t.crc) {
		return slotHeader{}, false
	}
	n := int(le.Uint32(h[dhLength:]))
	if n < 1 || n > t.cfg.PageSize {
		return slotHeader{}, false
	}
	return slotHeader{
		key:     PageKey{Block: le.Uint64(h[dhBlock:]), Index: le.Uint32(h[dhIndex:])},
		length:  n,
		gen:     le.Uint64(h[dhGen:]),
		dataCRC: le.Uint32(h[dhDataCRC:]),
	}, true
}

// encodeHeader writes the header for a page into h (diskBlockSize bytes)
// and returns the page's CRC-32C.
func (t *DiskTier) encodeHeader(h []byte, key PageKey, data []byte, gen uint64) uint32 {
	clear(h)
	le := binary.LittleEndian
	le.PutUint32(h[dhMagic:], diskSlotMagic)
	le.PutUint16(h[dhVersion:], diskFormatVersion)
	le.PutUint64(h[dhBlock:], key.Block)
	le.PutUint32(h[dhIndex:], key.Index)
	le.PutUint32(h[dhLength:], uint32(len(data)))
	le.PutUint64(h[dhGen:], gen)
	sum := crc32.Checksum(data, t.crc)
	le.PutUint32(h[dhDataCRC:], sum)
	le.PutUint32(h[dhHdrCRC:], crc32.Checksum(h[:dhHdrCRC], t.crc))
	return sum
}

// rebuild reads the headers of slots [0, scan) in parallel and indexes the
// valid ones; where two slots claim one page the newer generation wins.
// Pages enter the policy oldest first, so recency survives the restart
// approximately (as write order).
func (t *DiskTier) rebuild(ctx context.Context, scan int32) error {
	found := make([]slotHeader, scan)
	valid := make([]bool, scan)
	var corrupt atomic.Int64
	var next atomic.Int32
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	workers := min(defaultScanParallelism, t.cfg.ReadBuffers, int(scan))
	for range workers {
		buf := <-t.readBufs
		wg.Go(func() {
			defer func() { t.readBufs <- buf }()
			h := buf[:diskBlockSize]
			for {
				s := next.Add(1) - 1
				if s >= scan {
					return
				}
				if _, err := t.read(ctx, h, t.slotOff(s)); err != nil {
					errOnce.Do(func() { firstErr = err })
					next.Store(scan)
					return
				}
				found[s], valid[s] = t.decodeHeader(h)
				if !valid[s] && binary.LittleEndian.Uint32(h[dhMagic:]) == diskSlotMagic {
					corrupt.Add(1) // a slot that was written, but whose header fails its checks
				}
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		return fmt.Errorf("cache disk tier: scan slot headers: %w", firstErr)
	}
	if n := corrupt.Load(); n > 0 {
		t.m.checksumFailures.Add(float64(n))
		t.log.Warn("disk cache slot headers failed their checksum; slots freed", "slots", n)
	}
	var order []int32
	best := make(map[PageKey]int32)
	var maxGen uint64
	for s := range scan {
		if !valid[s] {
			continue
		}
		h := found[s]
		maxGen = max(maxGen, h.gen)
		if prev, dup := best[h.key]; dup {
			if found[prev].gen >= h.gen {
				continue
			}
		}
		best[h.key] = s
	}
	for _, s := range best {
		order = append(order, s)
	}
	slices.SortFunc(order, func(a, b int32) int { return cmp.Compare(found[a].gen, found[b].gen) })
	inIndex := make([]bool, t.nslots)
	for _, s := range order {
		h := found[s]
		t.index[h.key] = s
		t.keys[s], t.lens[s], t.gens[s], t.crcs[s], t.state[s] = h.key, int32(h.length), h.gen, h.dataCRC, slotValid
		t.chains.link(s, h.key.Block)
		t.insertPolicyLocked(s, h.key, AccessRandom)
		t.bytes += int64(h.length)
		inIndex[s] = true
	}
	for s := t.nslots - 1; s >= 0; s-- { // lowest slot on top
		if !inIndex[s] {
			t.free = append(t.free, s)
		}
	}
	t.nextGen.Store(maxGen + 1)
	t.m.bytes.Set(float64(t.bytes))
	return nil
}

func (t *DiskTier) slotOff(s int32) int64 {
	return int64(diskBlockSize) + int64(s)*int64(t.stride)
}

// pageOff is the file offset of slot s's page bytes.
func (t *DiskTier) pageOff(s int32) int64 {
	return t.slotOff(s) + diskBlockSize
}

// pageIOLen is the aligned I/O size of n page bytes.
func pageIOLen(n int) int {
	return (n + diskBlockSize - 1) &^ (diskBlockSize - 1)
}

// ioLen is the aligned I/O size of a slot image (header and page) holding
// n page bytes.
func ioLen(n int) int {
	return diskBlockSize + pageIOLen(n)
}

// read and write use the fixed-buffer calls when the arena is registered
// (buf is always arena memory).
func (t *DiskTier) read(ctx context.Context, buf []byte, off int64) (int, error) {
	if t.fixed {
		return t.eng.ReadFixed(ctx, t.fd, buf, off, 0)
	}
	return t.eng.ReadAt(ctx, t.fd, buf, off)
}

func (t *DiskTier) write(ctx context.Context, buf []byte, off int64) (int, error) {
	if t.fixed {
		return t.eng.WriteFixed(ctx, t.fd, buf, off, 0)
	}
	return t.eng.WriteAt(ctx, t.fd, buf, off)
}

// Name returns "disk".
func (t *DiskTier) Name() string { return "disk" }

// Get reads a page's bytes and verifies them against the index; see
// DiskTier.
func (t *DiskTier) Get(ctx context.Context, key PageKey, dst []byte) (int, bool, error) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return 0, false, nil
	}
	s, ok := t.index[key]
	if !ok {
		w := t.pending[key]
		if w == nil || w.dropped || len(dst) < w.n {
			t.mu.Unlock()
			return 0, false, nil
		}
		n := copy(dst, w.buf[diskBlockSize:diskBlockSize+w.n]) // the writer only reads buf
		t.mu.Unlock()
		return n, true, nil
	}
	n := int(t.lens[s])
	if len(dst) < n {
		t.mu.Unlock()
		return 0, false, fmt.Errorf("cache disk get block 0x%016x page %d: buffer of %d bytes for a %d-byte page", key.Block, key.Index, len(dst), n)
	}
	t.refs[s].Add(1)
	t.policy.Touch(s, AccessRandom)
	gen, sum := t.gens[s], t.crcs[s]
	t.ops.Add(1)
	t.mu.Unlock()
	defer t.ops.Done()

	var buf []byte
	select {
	case buf = <-t.readBufs:
	case <-ctx.Done():
		t.refs[s].Add(-1)
		return 0, false, fmt.Errorf("cache disk get block 0x%016x page %d: %w", key.Block, key.Index, ctx.Err())
	}
	defer func() { t.readBufs <- buf }()
	start := time.Now()
	// The pin keeps the slot from being rewritten until the read is done,
	// so the page on disk is the one whose CRC was taken with the pin.
	got, err := t.read(ctx, buf[:pageIOLen(n)], t.pageOff(s))
	t.dm.readDuration.Observe(time.Since(start).Seconds())
	t.refs[s].Add(-1)
	if err != nil {
		return 0, false, fmt.Errorf("cache disk get block 0x%016x page %d slot %d: %w", key.Block, key.Index, s, err)
	}
	data := buf[:n]
	if got < n || crc32.Checksum(data, t.crc) != sum {
		t.dropCorrupt(key, s, gen)
		return 0, false, nil
	}
	return copy(dst, data), true, nil
}

// dropCorrupt removes slot s if it still holds key at generation gen.
func (t *DiskTier) dropCorrupt(key PageKey, s int32, gen uint64) {
	t.m.checksumFailures.Inc()
	t.mu.Lock()
	defer t.mu.Unlock()
	if cur, ok := t.index[key]; !ok || cur != s || t.gens[s] != gen {
		return
	}
	t.log.Warn("cache page failed its checksum; dropped", "block", key.Block, "page", key.Index, "slot", s)
	t.removeLocked(s)
	t.releaseLocked(s)
}

// Put queues a page for writing and returns without waiting for the disk.
// A page already cached or queued is only touched; a full queue drops the
// page (counted).
func (t *DiskTier) Put(_ context.Context, key PageKey, data []byte, access Access) error {
	if len(data) == 0 || len(data) > t.cfg.PageSize {
		return fmt.Errorf("cache disk put block 0x%016x page %d: %d bytes, want 1..%d", key.Block, key.Index, len(data), t.cfg.PageSize)
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	if s, ok := t.index[key]; ok {
		t.policy.Touch(s, access)
		t.mu.Unlock()
		return nil
	}
	if _, queued := t.pending[key]; queued {
		t.mu.Unlock()
		return nil
	}
	t.ops.Add(1) // Close must not free the arena under our copy
	t.mu.Unlock()
	defer t.ops.Done()
	var w *diskWrite
	select {
	case w = <-t.wfree:
	default:
		t.dm.writeDrops.Inc()
		return nil
	}
	w.key, w.n, w.access, w.dropped = key, len(data), access, false
	w.gen = t.nextGen.Add(1) - 1
	w.crc = t.encodeHeader(w.buf[:diskBlockSize], key, data, w.gen)
	page := w.buf[diskBlockSize:ioLen(len(data))]
	clear(page[copy(page, data):])

	t.mu.Lock()
	defer t.mu.Unlock()
	_, cached := t.index[key]
	_, queued := t.pending[key]
	if t.closed || cached || queued {
		t.wfree <- w
		return nil
	}
	t.pending[key] = w
	t.work <- w // never blocks: capacity is the number of write buffers
	return nil
}

// writeLoop writes queued pages into slots until Close.
func (t *DiskTier) writeLoop() {
	ctx := context.Background() // a queued write outlives the Put that queued it
	for w := range t.work {
		t.writeOne(ctx, w)
		t.wfree <- w
	}
}

func (t *DiskTier) writeOne(ctx context.Context, w *diskWrite) {
	t.mu.Lock()
	if w.dropped {
		delete(t.pending, w.key)
		t.mu.Unlock()
		return
	}
	s, ok := t.allocLocked()
	if !ok {
		delete(t.pending, w.key)
		t.mu.Unlock()
		t.dm.writeDrops.Inc()
		return
	}
	t.state[s] = slotFilling
	t.mu.Unlock()

	_, err := t.write(ctx, w.buf[:ioLen(w.n)], t.slotOff(s))

	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.pending, w.key)
	if err != nil {
		t.dm.writeErrors.Inc()
		t.log.Warn("disk cache write failed; page dropped", "block", w.key.Block, "page", w.key.Index, "slot", s, "err", err)
		t.state[s] = slotFree
		t.free = append(t.free, s)
		return
	}
	if w.dropped {
		t.state[s] = slotFree
		t.free = append(t.free, s)
		return
	}
	t.index[w.key] = s
	t.keys[s], t.lens[s], t.gens[s], t.crcs[s], t.state[s] = w.key, int32(w.n), w.gen, w.crc, slotValid
	t.chains.link(s, w.key.Block)
	t.insertPolicyLocked(s, w.key, w.access)
	t.bytes += int64(w.n)
	t.m.bytes.Set(float64(t.bytes))
}

func (t *DiskTier) insertPolicyLocked(s int32, key PageKey, access Access) {
	if t.keyed != nil {
		t.keyed.InsertKey(s, key, access)
		return
	}
	t.policy.Insert(s, access)
}

// allocLocked returns a slot to write: free, an unpinned zombie, or the
// policy's victim.
func (t *DiskTier) allocLocked() (int32, bool) {
	if n := len(t.free); n > 0 {
		s := t.free[n-1]
		t.free = t.free[:n-1]
		return s, true
	}
	for j, s := range t.zombies {
		if t.refs[s].Load() == 0 {
			t.zombies[j] = t.zombies[len(t.zombies)-1]
			t.zombies = t.zombies[:len(t.zombies)-1]
			return s, true
		}
	}
	for tries := int32(0); tries < t.nslots; tries++ {
		v, ok := t.policy.Victim()
		if !ok {
			break
		}
		if t.refs[v].Load() > 0 {
			t.policy.Touch(v, AccessRandom) // being read right now
			continue
		}
		t.removeLocked(v)
		t.m.evictions.Inc()
		return v, true
	}
	return noSlot, false
}

func (t *DiskTier) removeLocked(s int32) {
	key := t.keys[s]
	delete(t.index, key)
	t.chains.unlink(s, key.Block)
	t.policy.Remove(s)
	t.bytes -= int64(t.lens[s])
	t.m.bytes.Set(float64(t.bytes))
	t.lens[s] = 0
	t.state[s] = slotFilling
}

func (t *DiskTier) releaseLocked(s int32) {
	if t.refs[s].Load() > 0 {
		t.state[s] = slotZombie
		t.zombies = append(t.zombies, s)
		return
	}
	t.state[s] = slotFree
	t.free = append(t.free, s)
}

// DropBlock forgets every page of a block, queued ones included. The slot
// headers stay on disk (see DiskTier).
func (t *DiskTier) DropBlock(_ context.Context, block uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for key, w := range t.pending {
		if key.Block == block {
			w.dropped = true
		}
	}
	t.chains.each(block, func(s int32) {
		t.removeLocked(s)
		t.releaseLocked(s)
	})
}

// Close writes the queued pages, waits for reads in flight, syncs and
// closes the file, and closes the engine if the tier opened it. Later Gets
// miss and Puts are ignored.
func (t *DiskTier) Close() error {
	t.closeMu.Lock()
	defer t.closeMu.Unlock()
	if t.closeDone {
		return t.closeErr
	}
	t.mu.Lock()
	t.closed = true
	close(t.work) // under mu: Put sends under mu after checking closed
	t.mu.Unlock()
	t.writers.Wait()
	t.ops.Wait()
	var errs []error
	if t.fd >= 0 {
		if err := t.eng.Fdatasync(context.Background(), t.fd); err != nil {
			errs = append(errs, fmt.Errorf("cache disk tier close: %w", err))
		}
	}
	if err := t.release(); err != nil {
		errs = append(errs, err)
	}
	t.mu.Lock()
	t.bytes = 0
	t.m.bytes.Set(0)
	t.mu.Unlock()
	t.closeDone, t.closeErr = true, errors.Join(errs...)
	return t.closeErr
}

// release closes the file and the owned engine and frees the arena; it is
// also the cleanup of a failed NewDiskTier.
func (t *DiskTier) release() error {
	var errs []error
	if t.fd >= 0 {
		if err := unix.Close(t.fd); err != nil {
			errs = append(errs, fmt.Errorf("cache disk tier close %s: %w", diskFileName, err))
		}
		t.fd = -1
	}
	if t.ownsEng && t.eng != nil {
		if err := t.eng.Close(); err != nil { // also drops the buffer registration
			errs = append(errs, fmt.Errorf("cache disk tier close engine: %w", err))
		}
		t.eng = nil
	}
	if t.arena != nil { // an owned engine is closed by now: no registration left
		if err := iouring.FreeAligned(t.arena); err != nil {
			errs = append(errs, fmt.Errorf("cache disk tier: %w", err))
		}
		t.arena = nil
	}
	return errors.Join(errs...)
}

// Engine returns the name of the I/O engine in use ("uring" or "psync").
func (t *DiskTier) Engine() string { return t.eng.Name() }

// Direct reports whether pages.dat is open with O_DIRECT.
func (t *DiskTier) Direct() bool { return t.direct }

// Path returns the path of the tier's page file.
func (t *DiskTier) Path() string { return filepath.Join(t.cfg.Dir, diskFileName) }

// Slots returns the number of page slots in the file.
func (t *DiskTier) Slots() int { return int(t.nslots) }

// Len returns the number of pages indexed (not counting queued writes).
func (t *DiskTier) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.index)
}

// Flush waits until the write queue is empty (every queued page written
// or dropped). It is for tests and benchmarks; Put never needs it.
func (t *DiskTier) Flush(ctx context.Context) error {
	for {
		t.mu.Lock()
		n := len(t.pending)
		t.mu.Unlock()
		if n == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cache disk tier flush: %w", ctx.Err())
		case <-time.After(200 * time.Microsecond):
		}
	}
}
