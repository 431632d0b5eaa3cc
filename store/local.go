package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Layout of a local store directory:
//
//	<root>/blocks/<xx>/<id>            a block: id is 16 hex digits, xx its last two
//	<root>/blocks/<xx>/<id>.tmp.<rnd>  a Put in progress, or left by a crash
//	<root>/blocks/.probe.<rnd>         a Check in progress, or left by a crash
//
// The two-hex-digit fan-out keeps every directory to 1/256 of the blocks.
const (
	blocksDirName = "blocks"
	tmpMarker     = ".tmp."
	probePrefix   = ".probe."

	// DefaultTmpGrace is how old a temporary file must be before Open's
	// sweep removes it. A grace period instead of "all at Open" keeps the
	// sweep safe even if a second process (a maintenance command, a node
	// restarted before the old one exited) writes the same directory; young
	// leftovers are harmless, since List ignores them, and go at the next
	// Open.
	DefaultTmpGrace = time.Hour

	// maxOpenBlocks bounds the cache of open read descriptors.
	maxOpenBlocks = 256

	filePerm = 0o600
	dirPerm  = 0o700
)

// errClosed is returned by operations on a closed store.
var errClosed = errors.New("store is closed")

// LocalStore is the file:// backend: one file per block under a local
// directory, written to a temporary name, fsynced and renamed into place.
// It is safe for concurrent use.
type LocalStore struct {
	root    string
	blocks  string
	io      fileIO
	log     *slog.Logger
	metrics *metrics
	fds     *fdCache
	closeGuard

	fanoutMu    sync.Mutex
	fanoutReady [256]bool // fan-out directory exists and its entry is durable
}

var _ Store = (*LocalStore)(nil)

func openLocal(ctx context.Context, root string, opts Options) (*LocalStore, error) {
	return openLocalIO(ctx, root, opts, syscallIO{})
}

// openLocalIO opens a local store doing its file I/O through fio.
func openLocalIO(ctx context.Context, root string, opts Options, fio fileIO) (*LocalStore, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("store open file://%s: register metrics: %w", root, err)
	}
	s := &LocalStore{
		root:    root,
		blocks:  filepath.Join(root, blocksDirName),
		io:      fio,
		log:     log.With("store", "file://"+root),
		metrics: m,
		fds:     newFDCache(fio, maxOpenBlocks),
	}
	if err := os.MkdirAll(root, dirPerm); err != nil {
		return nil, fmt.Errorf("store open %s: create directory: %w", s, err)
	}
	if fi, err := os.Stat(root); err != nil {
		return nil, fmt.Errorf("store open %s: %w", s, err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("store open %s: %s is not a directory", s, root)
	}
	switch err := fio.Mkdir(s.blocks, dirPerm); {
	case err == nil:
		if err := s.syncDir(root); err != nil {
			return nil, fmt.Errorf("store open %s: %w", s, err)
		}
	case errors.Is(err, unix.EEXIST):
	default:
		return nil, fmt.Errorf("store open %s: create %s: %w", s, s.blocks, err)
	}
	if n, err := s.Sweep(ctx, DefaultTmpGrace); err != nil {
		s.log.Warn("sweeping temporary files failed", "err", err)
	} else if n > 0 {
		s.log.Info("removed temporary files left by an earlier crash", "count", n)
	}
	return s, nil
}

// String returns the store URL.
func (s *LocalStore) String() string { return "file://" + s.root }

func (s *LocalStore) fanoutDir(id uint64) string {
	return filepath.Join(s.blocks, fmt.Sprintf("%02x", id&0xff))
}

func (s *LocalStore) blockPath(id uint64) string {
	return filepath.Join(s.fanoutDir(id), fmt.Sprintf("%016x", id))
}

// Put writes the block to a temporary file, fsyncs it, renames it into
// place and fsyncs the directory, so the block is durable when Put returns
// and never visible partially. On any failure the temporary file is removed.
func (s *LocalStore) Put(ctx context.Context, id uint64, data []byte) (err error) {
	start := time.Now()
	defer func() { s.metrics.observe(opPut, start, err) }()
	if err := s.usable(ctx); err != nil {
		return fmt.Errorf("store put block 0x%016x: %w", id, err)
	}
	if err := s.ensureFanout(id); err != nil {
		return fmt.Errorf("store put block 0x%016x: %w", id, err)
	}
	final := s.blockPath(id)
	tmp := fmt.Sprintf("%s%s%016x", final, tmpMarker, rand.Uint64())
	if err := s.writeFileSync(tmp, data); err != nil {
		return fmt.Errorf("store put block 0x%016x: %w", id, err)
	}
	if err := s.io.Rename(tmp, final); err != nil {
		_ = s.io.Unlink(tmp)
		return fmt.Errorf("store put block 0x%016x: rename %s: %w", id, tmp, err)
	}
	if err := s.syncDir(filepath.Dir(final)); err != nil {
		return fmt.Errorf("store put block 0x%016x: %w", id, err)
	}
	return nil
}

// writeFileSync creates path exclusively, writes data and fsyncs it. On
// failure path is removed.
func (s *LocalStore) writeFileSync(path string, data []byte) error {
	fd, err := s.io.CreateExcl(path, filePerm)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	fail := func(err error) error {
		_ = s.io.Close(fd)
		_ = s.io.Unlink(path)
		return err
	}
	if _, err := s.io.Pwrite(fd, data, 0); err != nil {
		return fail(fmt.Errorf("write %s: %w", path, err))
	}
	if err := s.io.Fsync(fd); err != nil {
		return fail(fmt.Errorf("fsync %s: %w", path, err))
	}
	if err := s.io.Close(fd); err != nil {
		_ = s.io.Unlink(path)
		return fmt.Errorf("close %s: %w", path, err)
	}
	return nil
}

// ensureFanout creates the block's fan-out directory if needed and makes
// its entry durable (once per directory per process: a directory found
// existing may come from a crash between mkdir and the parent's fsync).
func (s *LocalStore) ensureFanout(id uint64) error {
	i := id & 0xff
	s.fanoutMu.Lock()
	defer s.fanoutMu.Unlock()
	if s.fanoutReady[i] {
		return nil
	}
	dir := s.fanoutDir(id)
	if err := s.io.Mkdir(dir, dirPerm); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	if err := s.syncDir(s.blocks); err != nil {
		return err
	}
	s.fanoutReady[i] = true
	return nil
}

// syncDir fsyncs a directory, making renames and creations in it durable.
func (s *LocalStore) syncDir(dir string) error {
	fd, err := s.io.OpenDir(dir)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", dir, err)
	}
	err = s.io.Fsync(fd)
	cerr := s.io.Close(fd)
	if err != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, err)
	}
	if cerr != nil {
		return fmt.Errorf("close directory %s: %w", dir, cerr)
	}
	return nil
}

// ReadAt reads from the block with pread through a small cache of open
// descriptors (blocks are immutable, so a descriptor stays valid until
// Delete closes it).
func (s *LocalStore) ReadAt(ctx context.Context, id uint64, off int64, dst []byte) (n int, err error) {
	start := time.Now()
	defer func() { s.metrics.observe(opGet, start, err) }()
	if err := s.usable(ctx); err != nil {
		return 0, fmt.Errorf("store read block 0x%016x: %w", id, err)
	}
	if off < 0 {
		return 0, fmt.Errorf("store read block 0x%016x: negative offset %d", id, off)
	}
	b, err := s.fds.acquire(id, s.blockPath)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return 0, fmt.Errorf("store read block 0x%016x: %w", id, ErrNotFound)
		}
		return 0, fmt.Errorf("store read block 0x%016x: open: %w", id, err)
	}
	defer s.fds.release(b)
	for n < len(dst) {
		m, err := s.io.Pread(b.fd, dst[n:], off+int64(n))
		if err != nil {
			return n, fmt.Errorf("store read block 0x%016x: pread at %d: %w", id, off+int64(n), err)
		}
		if m == 0 {
			break // end of block: a short read
		}
		n += m
	}
	return n, nil
}

// Delete unlinks the block and closes any cached descriptor. The directory
// is not fsynced: a delete lost in a crash only leaves garbage that the
// next garbage collection finds again.
func (s *LocalStore) Delete(ctx context.Context, id uint64) (err error) {
	start := time.Now()
	defer func() { s.metrics.observe(opDelete, start, err) }()
	if err := s.usable(ctx); err != nil {
		return fmt.Errorf("store delete block 0x%016x: %w", id, err)
	}
	// Unlink before invalidating: a reader that opened the file before the
	// unlink read the fd cache epoch before the invalidation, so its
	// descriptor is not cached; one that opens after gets ENOENT.
	path := s.blockPath(id)
	err = s.io.Unlink(path)
	s.fds.invalidate(id)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("store delete block 0x%016x: unlink %s: %w", id, path, err)
	}
	return nil
}

// List calls fn for every complete block; temporary files are skipped. An
// error from fn stops the walk and is returned wrapped.
func (s *LocalStore) List(ctx context.Context, fn func(id uint64) error) (err error) {
	start := time.Now()
	defer func() { s.metrics.observe(opList, start, err) }()
	if err := s.usable(ctx); err != nil {
		return fmt.Errorf("store list: %w", err)
	}
	return s.walk(ctx, func(dir, name string) error {
		id, ok := parseBlockName(name)
		if !ok {
			return nil
		}
		if err := fn(id); err != nil {
			return fmt.Errorf("store list: block 0x%016x: %w", id, err)
		}
		return nil
	})
}

// walk calls fn for every entry of every fan-out directory, reading the
// directories in batches so huge ones are not held in memory.
func (s *LocalStore) walk(ctx context.Context, fn func(dir, name string) error) error {
	top, err := os.ReadDir(s.blocks)
	if err != nil {
		return fmt.Errorf("store %s: read %s: %w", s, s.blocks, err)
	}
	for _, e := range top {
		if !e.IsDir() || !isFanoutName(e.Name()) {
			continue
		}
		dir := filepath.Join(s.blocks, e.Name())
		if err := walkDir(ctx, dir, fn); err != nil {
			return err
		}
	}
	return nil
}

func walkDir(ctx context.Context, dir string, fn func(dir, name string) error) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open %s: %w", dir, err)
	}
	defer f.Close()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		names, err := f.Readdirnames(1024)
		for _, name := range names {
			if err := fn(dir, name); err != nil {
				return err
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s: %w", dir, err)
		}
	}
}

// Sweep removes temporary files (from Puts and Checks interrupted by a
// crash) last modified more than olderThan ago, and returns how many it
// removed. Open runs it with DefaultTmpGrace.
func (s *LocalStore) Sweep(ctx context.Context, olderThan time.Duration) (int, error) {
	cutoff := time.Now().Add(-olderThan)
	removed := 0
	remove := func(path string) error {
		fi, err := os.Lstat(path)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			return err
		}
		if fi.Mode().IsRegular() && fi.ModTime().Before(cutoff) {
			if err := s.io.Unlink(path); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("remove %s: %w", path, err)
			}
			removed++
		}
		return nil
	}
	top, err := os.ReadDir(s.blocks)
	if err != nil {
		return 0, fmt.Errorf("store sweep %s: %w", s, err)
	}
	for _, e := range top {
		if strings.HasPrefix(e.Name(), probePrefix) {
			if err := remove(filepath.Join(s.blocks, e.Name())); err != nil {
				return removed, fmt.Errorf("store sweep %s: %w", s, err)
			}
		}
	}
	err = s.walk(ctx, func(dir, name string) error {
		if !strings.Contains(name, tmpMarker) {
			return nil
		}
		return remove(filepath.Join(dir, name))
	})
	if err != nil {
		return removed, fmt.Errorf("store sweep %s: %w", s, err)
	}
	return removed, nil
}

// Check writes, fsyncs and removes a probe file in the blocks directory, so
// a read-only or unwritable store fails at start-up with a clear error.
func (s *LocalStore) Check(ctx context.Context) error {
	if err := s.usable(ctx); err != nil {
		return fmt.Errorf("store check %s: %w", s, err)
	}
	probe := filepath.Join(s.blocks, fmt.Sprintf("%s%016x", probePrefix, rand.Uint64()))
	if err := s.writeFileSync(probe, []byte("datenlord store probe\n")); err != nil {
		return fmt.Errorf("store check %s: not writable: %w", s, err)
	}
	if err := s.io.Unlink(probe); err != nil {
		return fmt.Errorf("store check %s: remove probe: %w", s, err)
	}
	return nil
}

// Close closes the cached descriptors; later calls fail.
func (s *LocalStore) Close() error {
	if !s.markClosed() {
		return nil
	}
	s.fds.closeAll()
	return nil
}

// closeGuard makes a store's calls fail once it is closed.
type closeGuard struct{ closed atomic.Bool }

// markClosed reports whether this call closed the store (false: already
// closed).
func (g *closeGuard) markClosed() bool { return !g.closed.Swap(true) }

// usable fails after Close, or when ctx is done.
func (g *closeGuard) usable(ctx context.Context) error {
	if g.closed.Load() {
		return errClosed
	}
	return ctx.Err()
}

// parseBlockName returns the id of a block file name (16 lower-case hex
// digits); temporary and foreign files are not blocks.
func parseBlockName(name string) (uint64, bool) {
	if len(name) != 16 {
		return 0, false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return 0, false
		}
	}
	id, err := strconv.ParseUint(name, 16, 64)
	return id, err == nil
}

func isFanoutName(name string) bool {
	_, ok := parseHex2(name)
	return ok
}

func parseHex2(name string) (uint64, bool) {
	if len(name) != 2 {
		return 0, false
	}
	v, err := strconv.ParseUint(name, 16, 8)
	return v, err == nil && strings.ToLower(name) == name
}
