package iouring

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkReadQD32 measures 4 KiB random O_DIRECT reads at queue depth 32
// (32 goroutines) over a 64 MiB file, per engine and per call (ReadAt, and
// ReadFixed into a registered arena). It reports IOPS, allocations per
// read (the hot path should make none) and CPU time (user+system of the
// whole process) per read.
func BenchmarkReadQD32(b *testing.B) {
	const qd, bs, fileSize = 32, 4096, 64 << 20
	path := filepath.Join(b.TempDir(), "bench.dat")
	fd, direct, err := OpenDirect(path, unix.O_RDWR|unix.O_CREAT, 0o600, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	if !direct {
		b.Log("LOUD: no O_DIRECT here; reads are buffered")
	}
	// Write the file for real: reads of an unwritten extent never reach
	// the device.
	fill, err := AllocAligned(1 << 20)
	if err != nil {
		b.Fatal(err)
	}
	for i := range fill {
		fill[i] = byte(i * 7)
	}
	for off := 0; off < fileSize; off += len(fill) {
		if _, err := unix.Pwrite(fd, fill, int64(off)); err != nil {
			b.Fatal(err)
		}
	}
	_ = FreeAligned(fill)
	if err := unix.Fsync(fd); err != nil {
		b.Fatal(err)
	}
	for _, kind := range engineKinds {
		for _, fixed := range []bool{false, true} {
			name := kind + "/ReadAt"
			if fixed {
				name = kind + "/ReadFixed"
			}
			b.Run(name, func(b *testing.B) {
				e, err := Open(Config{Kind: kind})
				if err != nil {
					b.Fatal(err)
				}
				defer e.Close()
				arena, err := AllocAligned(qd * bs)
				if err != nil {
					b.Fatal(err)
				}
				defer FreeAligned(arena)
				if fixed {
					if err := e.RegisterBuffers([][]byte{arena}); err != nil {
						b.Fatal(err)
					}
				}
				ctx := context.Background()
				per := (b.N + qd - 1) / qd
				var wg sync.WaitGroup
				b.ReportAllocs()
				var ru0, ru1 syscall.Rusage
				_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
				b.ResetTimer()
				start := time.Now()
				for w := range qd {
					wg.Go(func() {
						buf := arena[w*bs : (w+1)*bs]
						r := rand.New(rand.NewPCG(uint64(w), 3))
						for range per {
							off := int64(r.IntN(fileSize/bs)) * bs
							var err error
							if fixed {
								_, err = e.ReadFixed(ctx, fd, buf, off, 0)
							} else {
								_, err = e.ReadAt(ctx, fd, buf, off)
							}
							if err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				elapsed := time.Since(start)
				b.StopTimer()
				_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
				cpu := time.Duration(ru1.Utime.Nano()+ru1.Stime.Nano()-ru0.Utime.Nano()-ru0.Stime.Nano()) * time.Nanosecond
				n := float64(per * qd)
				b.ReportMetric(n/elapsed.Seconds(), "IOPS")
				b.ReportMetric(float64(cpu.Nanoseconds())/n, "cpu-ns/read")
			})
		}
	}
}
