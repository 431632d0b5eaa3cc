package cache

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/datenlord/datenlord-go/iouring"
)

// BenchmarkDiskTierRandRead4K measures 4 KiB random-read IOPS through the
// disk tier at queue depth 32 (32 goroutines calling Get) over a 64 MiB
// pages.dat and, in the same run and on the same file, two baselines:
//
//   - fio --ioengine=io_uring --iodepth=32 --direct=1 --rw=randread --bs=4k
//     (the acceptance target is ratio-vs-fio >= 0.9 on the uring engine);
//   - the raw engine: 32 goroutines calling the tier's engine kind's ReadAt
//     (4 KiB, O_DIRECT, random page offsets) with no tier around it.
//
// A Get reads only the page (the index holds its CRC), so tier, fio and
// raw engine all do 4 KiB I/Os. The b.N Gets run in 3 rounds, each
// followed by the raw engine and fio for as long as the round took (at
// least 0.5 s), so that all three see the same drift of a shared
// machine's load; use -benchtime=Nx (e.g. 150000x) to skip b.N's ramp-up
// runs. Without fio the benchmark says so loudly and reports the raw
// baseline only.
func BenchmarkDiskTierRandRead4K(b *testing.B) {
	for _, engine := range diskEngines {
		b.Run(engine, func(b *testing.B) {
			b.ReportAllocs()
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
			// Rounds of tier, raw engine and fio, each as long as the tier's
			// share of the round: on a shared machine the load drifts, and
			// interleaving exposes all three to the same drift.
			const rounds = 3
			per := max((b.N+qd*rounds-1)/(qd*rounds), 1)
			dsts := make([][]byte, qd)
			for w := range dsts {
				dsts[w] = make([]byte, pageSize)
			}
			fio := fioPath()
			if fio == "" {
				b.Log("LOUD: fio is not installed (apt-get install -y fio); only the raw engine baseline is reported")
			}
			var tierTime time.Duration
			var rawOps, fioOps float64
			var rawTime, fioTime time.Duration
			b.ResetTimer()
			for round := range rounds {
				b.StartTimer()
				start := time.Now()
				var wg sync.WaitGroup
				for w := range qd {
					wg.Go(func() {
						r := rand.New(rand.NewPCG(uint64(w), uint64(7+round)))
						dst := dsts[w]
						for range per {
							i := r.IntN(slots)
							if _, ok, err := d.Get(ctx, PageKey{uint64(i / 64), uint32(i % 64)}, dst); !ok || err != nil {
								b.Errorf("get: %v, %v", ok, err)
								return
							}
						}
					})
				}
				wg.Wait()
				elapsed := time.Since(start)
				b.StopTimer()
				tierTime += elapsed
				dur := max(elapsed, 500*time.Millisecond)
				raw := rawEngineIOPS(b, d, engine, qd, dur)
				rawOps += raw * dur.Seconds()
				rawTime += dur
				if fio != "" {
					f, err := runFio(fio, d.Path(), "4k", dur)
					if err != nil {
						b.Fatalf("fio: %v", err)
					}
					fioOps += f * dur.Seconds()
					fioTime += dur
				}
			}
			iops := float64(per*qd*rounds) / tierTime.Seconds()
			raw := rawOps / rawTime.Seconds()
			b.ReportMetric(iops, "IOPS")
			b.ReportMetric(raw, "raw-IOPS")
			b.ReportMetric(iops/raw, "ratio-vs-raw")
			if fio != "" {
				f4 := fioOps / fioTime.Seconds()
				b.ReportMetric(f4, "fio-IOPS")
				b.ReportMetric(iops/f4, "ratio-vs-fio")
			}
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

// runFio runs a fio random read of path at queue depth 32 for dur and
// returns its IOPS.
func runFio(fio, path, bs string, dur time.Duration) (float64, error) {
	out, err := exec.Command(fio, "--name=randread", "--filename="+path, "--ioengine=io_uring", "--iodepth=32",
		"--direct=1", "--rw=randread", "--bs="+bs, fmt.Sprintf("--runtime=%dms", dur.Milliseconds()), "--time_based",
		"--numjobs=1", "--output-format=json").Output()
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

// rawEngineIOPS reads random 4 KiB pages of the tier's file straight
// through a fresh engine of kind for dur at queue depth qd: what the
// engine does without the tier around it.
func rawEngineIOPS(b *testing.B, d *DiskTier, kind string, qd int, dur time.Duration) float64 {
	eng, err := iouring.Open(iouring.Config{Kind: kind})
	if err != nil {
		b.Fatal(err)
	}
	defer eng.Close()
	var ops sync.WaitGroup
	var total atomic.Int64
	deadline := time.Now().Add(dur)
	start := time.Now()
	for w := range qd {
		ops.Go(func() {
			buf, err := iouring.AllocAligned(d.cfg.PageSize)
			if err != nil {
				b.Error(err)
				return
			}
			defer iouring.FreeAligned(buf)
			r := rand.New(rand.NewPCG(uint64(w), 9))
			n := int64(0)
			for ; n&63 != 0 || time.Now().Before(deadline); n++ {
				if _, err := eng.ReadAt(context.Background(), d.fd, buf, d.pageOff(int32(r.IntN(d.Slots())))); err != nil {
					b.Error(err)
					return
				}
			}
			total.Add(n)
		})
	}
	ops.Wait()
	return float64(total.Load()) / time.Since(start).Seconds()
}
