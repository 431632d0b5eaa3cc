package cache

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/datenlord/datenlord-go/iouring"
)

// BenchmarkDiskTierRandRead4K measures 4 KiB random-read IOPS through the
// disk tier at queue depth 32 (32 goroutines calling Get) over a 64 MiB
// pages.dat, and next to it runs fio on the same file:
//
//	fio --ioengine=io_uring --iodepth=32 --direct=1 --rw=randread --bs=4k
//
// and with --bs=8k, since a tier Get reads its 4 KiB header with the page
// (one 8 KiB I/O). It reports IOPS, fio's IOPS and the ratios. Without fio
// it says so loudly and reports the raw engine's 8 KiB IOPS as the
// baseline instead.
func BenchmarkDiskTierRandRead4K(b *testing.B) {
	for _, engine := range diskEngines {
		b.Run(engine, func(b *testing.B) {
			const pageSize, slots, qd = 4096, 8192, 32
			ctx := context.Background()
			d, err := NewDiskTier(ctx, DiskConfig{
				Dir: b.TempDir(), Bytes: int64(diskBlockSize + slots*(diskBlockSize+pageSize)), PageSize: pageSize,
				EngineKind: engine, ReadBuffers: qd, WriteQueue: 256,
			})
			if err != nil {
				b.Fatal(err)
			}
			defer d.Close()
			for i := range slots {
				key := PageKey{uint64(i / 64), uint32(i % 64)}
				for d.Put(ctx, key, pageData(key, pageSize), AccessRandom) == nil && !queuedOrCached(d, key) {
					time.Sleep(10 * time.Microsecond) // queue full: wait for the writers
				}
			}
			flush(b, d)
			b.ResetTimer()
			start := time.Now()
			var next sync.WaitGroup
			per := (b.N + qd - 1) / qd
			for w := range qd {
				next.Go(func() {
					r := rand.New(rand.NewPCG(uint64(w), 7))
					dst := make([]byte, pageSize)
					for range per {
						i := r.IntN(slots)
						if _, ok, err := d.Get(ctx, PageKey{uint64(i / 64), uint32(i % 64)}, dst); !ok || err != nil {
							b.Errorf("get: %v, %v", ok, err)
							return
						}
					}
				})
			}
			next.Wait()
			iops := float64(per*qd) / time.Since(start).Seconds()
			b.StopTimer()
			b.ReportMetric(iops, "IOPS")
			if fio := fioPath(); fio != "" {
				f4, err4 := runFio(fio, d.Path(), "4k")
				f8, err8 := runFio(fio, d.Path(), "8k")
				if err4 != nil || err8 != nil {
					b.Fatalf("fio: %v %v", err4, err8)
				}
				b.ReportMetric(f4, "fio4k-IOPS")
				b.ReportMetric(f8, "fio8k-IOPS")
				b.ReportMetric(iops/f4, "ratio-vs-fio4k")
				b.ReportMetric(iops/f8, "ratio-vs-fio8k")
				return
			}
			b.Log("LOUD: fio is not installed (apt-get install -y fio); baseline is the raw iouring engine instead")
			raw := rawEngineIOPS(b, d, qd)
			b.ReportMetric(raw, "raw8k-IOPS")
			b.ReportMetric(iops/raw, "ratio-vs-raw")
		})
	}
}

func queuedOrCached(d *DiskTier, key PageKey) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, q := d.pending[key]
	_, c := d.index[key]
	return q || c
}

// runFio runs a 3-second fio random read of path at queue depth 32 and
// returns its IOPS.
func runFio(fio, path, bs string) (float64, error) {
	out, err := exec.Command(fio, "--name=randread", "--filename="+path, "--ioengine=io_uring", "--iodepth=32",
		"--direct=1", "--rw=randread", "--bs="+bs, "--runtime=3", "--time_based", "--numjobs=1",
		"--output-format=json").Output()
	if err != nil {
		return 0, fmt.Errorf("%v: %s", err, out)
	}
	var res struct {
		Jobs []struct {
			Read struct {
				IOPS float64 `json:"iops"`
			} `json:"read"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(out, &res); err != nil || len(res.Jobs) == 0 {
		return 0, fmt.Errorf("parse fio output: %v", err)
	}
	return res.Jobs[0].Read.IOPS, nil
}

// rawEngineIOPS reads random 8 KiB slots of the tier's file straight
// through a fresh io_uring engine for 3 seconds at queue depth qd.
func rawEngineIOPS(b *testing.B, d *DiskTier, qd int) float64 {
	eng, err := iouring.Open(iouring.Config{Kind: iouring.KindAuto})
	if err != nil {
		b.Fatal(err)
	}
	defer eng.Close()
	var ops sync.WaitGroup
	var mu sync.Mutex
	total := 0
	deadline := time.Now().Add(3 * time.Second)
	start := time.Now()
	for w := range qd {
		ops.Go(func() {
			buf, err := iouring.AllocAligned(2 * diskBlockSize)
			if err != nil {
				b.Error(err)
				return
			}
			defer iouring.FreeAligned(buf)
			r := rand.New(rand.NewPCG(uint64(w), 9))
			n := 0
			for time.Now().Before(deadline) {
				if _, err := eng.ReadAt(context.Background(), d.fd, buf, d.slotOff(int32(r.IntN(d.Slots())))); err != nil {
					b.Error(err)
					return
				}
				n++
			}
			mu.Lock()
			total += n
			mu.Unlock()
		})
	}
	ops.Wait()
	return float64(total) / time.Since(start).Seconds()
}
