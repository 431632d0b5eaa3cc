package bench

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/datenlord/datenlord-go/fs/fstest"
)

// Workload sizes; overridable for quick runs:
// DATENLORD_BENCH_BYTES (default 1 GiB) and DATENLORD_BENCH_FILES (100000).
func envInt(tb testing.TB, name string, def int64) int64 {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		tb.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// target is one file system under test: the raw disk (a directory on the
// same disk as datenlord's data dir) or a datenlord mount.
type target struct {
	name string
	// dir returns the directory to work in.
	dir func() string
	// cold drops every cache between the data and the reader.
	cold func(tb testing.TB)
}

// dropPageCache drops the kernel's clean page cache (root only), so that
// reads come from the disk. Without root the figures include the cache,
// which the benchmark says loudly.
func dropPageCache(tb testing.TB) {
	unix.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		tb.Logf("NOTE: cannot drop the page cache (%v): cold reads may be warm", err)
	}
}

func targets(b *testing.B) []target {
	raw := b.TempDir()
	var h *fstest.Harness
	return []target{
		{name: "raw", dir: func() string { return raw }, cold: dropPageCache},
		{
			name: "datenlord",
			dir: func() string {
				if h == nil {
					h = fstest.Start(b)
				}
				return h.Mountpoint
			},
			cold: func(tb testing.TB) {
				// A restart empties datenlord's memory cache; dropping the
				// kernel cache makes the store's block files cold too.
				h.Restart()
				dropPageCache(tb)
			},
		},
	}
}

// BenchmarkSequential writes a large file with 1 MiB writes and fsync, then
// reads it back cold, on the raw disk and on datenlord in the same run.
func BenchmarkSequential(b *testing.B) {
	size := envInt(b, "DATENLORD_BENCH_BYTES", 1<<30)
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	if _, err := rand.Read(buf); err != nil {
		b.Fatal(err)
	}
	for _, tg := range targets(b) {
		b.Run(tg.name+"/write", func(b *testing.B) {
			b.SetBytes(size)
			for i := 0; i < b.N; i++ {
				path := filepath.Join(tg.dir(), "seq")
				f, err := os.Create(path)
				if err != nil {
					b.Fatal(err)
				}
				for off := int64(0); off < size; off += chunk {
					if _, err := f.Write(buf[:min(chunk, size-off)]); err != nil {
						b.Fatal(err)
					}
				}
				if err := f.Sync(); err != nil {
					b.Fatal(err)
				}
				if err := f.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(tg.name+"/read-cold", func(b *testing.B) {
			b.SetBytes(size)
			rbuf := make([]byte, chunk)
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				tg.cold(b)
				b.StartTimer()
				f, err := os.Open(filepath.Join(tg.dir(), "seq"))
				if err != nil {
					b.Fatal(err)
				}
				var n int64
				for off := int64(0); ; off += chunk {
					m, err := io.ReadFull(f, rbuf)
					n += int64(m)
					if m > 0 && !bytes.Equal(rbuf[:m], buf[:m]) {
						b.Fatalf("content differs at offset %d", off)
					}
					if err == io.EOF || err == io.ErrUnexpectedEOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
				}
				f.Close()
				if n != size {
					b.Fatalf("read %d bytes, want %d", n, size)
				}
			}
		})
	}
}

// BenchmarkSmallFiles creates many empty files from 8 workers, then stats
// each, on the raw disk and on datenlord in the same run. It reports
// files/s for each phase. Run it with -benchtime=1x: one iteration is the
// whole workload.
func BenchmarkSmallFiles(b *testing.B) {
	files := int(envInt(b, "DATENLORD_BENCH_FILES", 100000))
	const workers = 8
	const dirs = 100
	for _, tg := range targets(b) {
		var roots []string
		parallel := func(b *testing.B, root string, fn func(path string) error) {
			var wg sync.WaitGroup
			errs := make(chan error, workers)
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func(w int) {
					defer wg.Done()
					for n := w; n < files; n += workers {
						p := filepath.Join(root, strconv.Itoa(n%dirs), "f"+strconv.Itoa(n))
						if err := fn(p); err != nil {
							errs <- err
							return
						}
					}
				}(w)
			}
			wg.Wait()
			close(errs)
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
		}
		b.Run(tg.name+"/create", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				root := filepath.Join(tg.dir(), fmt.Sprintf("small%d", len(roots)))
				for d := 0; d < dirs; d++ {
					if err := os.MkdirAll(filepath.Join(root, strconv.Itoa(d)), 0o755); err != nil {
						b.Fatal(err)
					}
				}
				roots = append(roots, root)
				b.StartTimer()
				parallel(b, root, func(path string) error {
					f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
					if err != nil {
						return err
					}
					return f.Close()
				})
			}
			b.ReportMetric(float64(files*b.N)/b.Elapsed().Seconds(), "files/s")
		})
		b.Run(tg.name+"/stat", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				parallel(b, roots[i%len(roots)], func(path string) error {
					_, err := os.Stat(path)
					return err
				})
			}
			b.ReportMetric(float64(files*b.N)/b.Elapsed().Seconds(), "files/s")
		})
	}
}
