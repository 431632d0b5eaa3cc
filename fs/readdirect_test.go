package fs_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/datenlord/datenlord-go/fs/fstest"
)

// TestSequentialReadReread reads files cold and sequentially (the path
// that serves reads straight from the readahead buffers), with read
// sizes that do and do not line up with pages and blocks, some readers
// side by side, and then again: every read returns the file's bytes, the
// cold read counts every page it reads in the cache metrics (the pages
// lent from prefetch buffers as hits of tier "prefetch"), and the warm
// re-read of a file the memory tier holds costs no store GET.
func TestSequentialReadReread(t *testing.T) {
	const bs, ps = 256 << 10, 64 << 10
	cases := []struct {
		name    string
		size    int
		readLen int
		readers int
	}{
		{"aligned 1 MiB reads", 6 << 20, 1 << 20, 1},
		{"odd reads, short tail", 5<<20 + 12345, 100_000, 1},
		{"page-sized reads", 3<<20 + 1, ps, 1},
		{"two readers", 4<<20 + 777, 300_000, 2},
	}
	reg := prometheus.NewRegistry()
	h := fstest.Start(t, fstest.WithBlockSize(bs), fstest.WithPageSize(ps),
		fstest.WithCacheBytes(64<<20), fstest.WithRegisterer(reg))
	gets := func() float64 {
		return labeledCounter(t, reg, "datenlord_store_requests_total", map[string]string{"op": "get"})
	}
	pageReads := func(name, tier string) float64 {
		return labeledCounter(t, reg, name, map[string]string{"tier": tier})
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			data := randBytes(uint64(300+i), tc.size)
			path := h.Path("seq", tc.name)
			must(t, os.MkdirAll(h.Path("seq"), 0o755))
			must(t, os.WriteFile(path, data, 0o644))
			h.Restart() // cold memory tier

			pf0 := pageReads("datenlord_cache_hits_total", "prefetch")
			mem0 := pageReads("datenlord_cache_hits_total", "memory") + pageReads("datenlord_cache_misses_total", "memory")
			var wg sync.WaitGroup
			errs := make(chan error, tc.readers)
			for range tc.readers {
				wg.Go(func() { errs <- readCompare(path, data, tc.readLen) })
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatalf("cold read: %v", err)
				}
			}
			// Every page is read at least once, served by a prefetch's
			// buffer or asked of the memory tier (the only tier here).
			pf := pageReads("datenlord_cache_hits_total", "prefetch") - pf0
			mem := pageReads("datenlord_cache_hits_total", "memory") + pageReads("datenlord_cache_misses_total", "memory") - mem0
			pages := (tc.size + ps - 1) / ps
			t.Logf("cold read of %d pages: %v prefetch hits, %v memory hits and misses", pages, pf, mem)
			if pf == 0 {
				t.Errorf("cold read: no prefetch hits (reads lent from prefetch buffers are not counted)")
			}
			if pf+mem < float64(pages) {
				t.Errorf("cold read: %v page reads counted (prefetch %v, memory %v), want at least the file's %d pages", pf+mem, pf, mem, pages)
			}

			before := gets()
			if err := readCompare(path, data, tc.readLen); err != nil {
				t.Fatalf("warm re-read: %v", err)
			}
			if got := gets() - before; got != 0 {
				t.Errorf("warm re-read: %v store GETs, want 0 (the memory tier holds the file)", got)
			}
		})
	}
}

// readCompare reads path sequentially with reads of n bytes and compares
// with want. The open drops the kernel's cached pages of the file (no
// FOPEN_KEEP_CACHE), so every byte comes from the file system.
func readCompare(path string, want []byte, n int) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	buf := make([]byte, n)
	off := 0
	for {
		m, err := io.ReadFull(f, buf)
		if m > 0 {
			if off+m > len(want) || !bytes.Equal(buf[:m], want[off:off+m]) {
				return fmt.Errorf("content differs in the read of %d bytes at %d", m, off)
			}
			off += m
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read at %d: %w", off, err)
		}
	}
	if off != len(want) {
		return fmt.Errorf("read %d bytes, want %d", off, len(want))
	}
	return nil
}
