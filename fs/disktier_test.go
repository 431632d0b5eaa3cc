package fs_test

import (
	"bytes"
	"context"
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/datenlord/datenlord-go/fs/fstest"
	"github.com/datenlord/datenlord-go/iouring"
)

// labeledCounter returns the value of the counter name whose labels
// include all of want, or 0.
func labeledCounter(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	must(t, err)
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, lp := range m.GetLabel() {
				have[lp.GetName()] = lp.GetValue()
			}
			for k, v := range want {
				if have[k] != v {
					continue next
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// TestDiskTierEngines mounts with the NVMe tier on each I/O engine and a
// memory tier much smaller than the data: files written (sequentially and
// with overwrites) read back correctly, and after a restart (cold memory,
// warm disk) they read back from the disk tier without store GETs.
func TestDiskTierEngines(t *testing.T) {
	for _, engine := range []string{iouring.KindUring, iouring.KindPsync} {
		t.Run(engine, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			h := fstest.Start(t,
				fstest.WithDiskTier(t.TempDir(), 64<<20, engine),
				fstest.WithCacheBytes(2<<20),
				fstest.WithBlockSize(256<<10),
				fstest.WithRegisterer(reg))
			if got := h.Disk.Engine(); got != engine {
				t.Fatalf("disk tier engine %q, want %q", got, engine)
			}
			seq := randBytes(11, 8<<20+5000)
			if _, err := writeSync(h.Path("seq"), seq); err != nil {
				t.Fatalf("write seq: %v", err)
			}
			// Overwrite scattered ranges of a second file in place.
			rnd := randBytes(12, 3<<20)
			if _, err := writeSync(h.Path("rnd"), rnd); err != nil {
				t.Fatalf("write rnd: %v", err)
			}
			f, err := os.OpenFile(h.Path("rnd"), os.O_RDWR, 0)
			must(t, err)
			for i, off := range []int64{0, 70000, 1 << 20, 3<<20 - 100} {
				patch := randBytes(uint64(100+i), 9000)
				_, err := f.WriteAt(patch, off)
				must(t, err)
				if end := int(off) + len(patch); end > len(rnd) { // the last one extends the file
					rnd = append(rnd, make([]byte, end-len(rnd))...)
				}
				copy(rnd[off:], patch)
			}
			must(t, f.Sync())
			must(t, f.Close())
			for name, want := range map[string][]byte{"seq": seq, "rnd": rnd} {
				if got, err := readUncached(t, h.Path(name)); err != nil || !bytes.Equal(got, want) {
					t.Fatalf("%s before restart: %d bytes (equal %v), %v; want %d bytes", name, len(got), bytes.Equal(got, want), err, len(want))
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			must(t, h.Disk.Flush(ctx))
			drops := labeledCounter(t, reg, "datenlord_cache_write_drops_total", map[string]string{"tier": "disk"})
			t.Logf("%s: %d pages in the disk tier, %v write drops", engine, h.Disk.Len(), drops)

			h.Restart() // cold memory tier, warm disk tier
			if got := h.Disk.Engine(); got != engine {
				t.Fatalf("disk tier engine after restart %q, want %q", got, engine)
			}
			gets := func() float64 {
				return labeledCounter(t, reg, "datenlord_store_requests_total", map[string]string{"op": "get"})
			}
			hits := func() float64 {
				return labeledCounter(t, reg, "datenlord_cache_hits_total", map[string]string{"tier": "disk"})
			}
			get0, hit0 := gets(), hits()
			for name, want := range map[string][]byte{"seq": seq, "rnd": rnd} {
				if got, err := readUncached(t, h.Path(name)); err != nil || !bytes.Equal(got, want) {
					t.Errorf("%s after restart: %d bytes (equal %v), %v; want %d bytes", name, len(got), bytes.Equal(got, want), err, len(want))
				}
			}
			dGets, dHits := gets()-get0, hits()-hit0
			t.Logf("%s: re-read after restart: %v disk hits, %v store GETs", engine, dHits, dGets)
			if dHits == 0 {
				t.Errorf("re-read after restart: no disk tier hits")
			}
			if drops == 0 && dGets != 0 {
				t.Errorf("re-read after restart: %v store GETs with every page in the disk tier; want 0", dGets)
			}
		})
	}
}
