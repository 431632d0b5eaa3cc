package tiers

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Op performs one page read of a workload; i counts the calls of one
// worker from 0. It must not allocate per call in steady state (the
// measurement loop itself does not).
type Op func(ctx context.Context, i int) error

// Workload opens the per-worker state of a measured row: worker w gets its
// own buffers (and connections) and an Op over them; done releases them.
// Worker 0 is used for the latency phase, workers 0..Parallel-1 for the
// throughput phase.
type Workload func(ctx context.Context, w int) (op Op, done func(), err error)

// measure runs wl: a warm-up, a latency phase on one worker (one request
// at a time, every latency recorded) and a throughput phase on
// cfg.Parallel workers, each bounded by cfg.Duration and cfg.Iterations.
func (r *runner) measure(ctx context.Context, row *Row, wl Workload) error {
	cfg := r.cfg
	op, done, err := wl(ctx, 0)
	if err != nil {
		return fmt.Errorf("%s %s: open: %w", row.Tier, sizeName(row.Size), err)
	}
	// Warm-up: connections established, buffers touched, lazily mapped
	// memory faulted in.
	warm := min(cfg.Iterations/10+1, 100)
	start := time.Now()
	for i := range warm {
		if err := op(ctx, i); err != nil {
			done()
			return fmt.Errorf("%s %s: warm-up read %d: %w", row.Tier, sizeName(row.Size), i, err)
		}
		if time.Since(start) > cfg.Duration {
			break
		}
	}
	lat := make([]time.Duration, 0, cfg.Iterations)
	start = time.Now()
	deadline := start.Add(cfg.Duration)
	for i := 0; i < cfg.Iterations; i++ {
		t0 := time.Now()
		if err := op(ctx, warm+i); err != nil {
			done()
			return fmt.Errorf("%s %s: read %d: %w", row.Tier, sizeName(row.Size), i, err)
		}
		t1 := time.Now()
		lat = append(lat, t1.Sub(t0))
		if i >= cfg.MinSamples && t1.After(deadline) {
			break
		}
		if t1.Sub(start) > 4*cfg.Duration { // a slow tier: keep the run bounded
			break
		}
	}
	done()
	row.setLatencies(lat)
	if cfg.Parallel < 1 {
		return nil
	}
	mbps, err := r.throughput(ctx, row, wl)
	if err != nil {
		return err
	}
	row.MBps = mbps
	row.Parallel = cfg.Parallel
	return nil
}

// throughput runs cfg.Parallel workers for cfg.Duration and returns MB/s
// (10^6 bytes per second) over all of them.
func (r *runner) throughput(ctx context.Context, row *Row, wl Workload) (float64, error) {
	cfg := r.cfg
	ops := make([]Op, cfg.Parallel)
	dones := make([]func(), 0, cfg.Parallel)
	defer func() {
		for _, d := range dones {
			d()
		}
	}()
	for w := range ops {
		op, done, err := wl(ctx, w)
		if err != nil {
			return 0, fmt.Errorf("%s %s: open worker %d: %w", row.Tier, sizeName(row.Size), w, err)
		}
		ops[w] = op
		dones = append(dones, done)
	}
	var wg sync.WaitGroup
	counts := make([]int, cfg.Parallel)
	errs := make([]error, cfg.Parallel)
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	maxOps := cfg.Iterations
	for w, op := range ops {
		wg.Go(func() {
			for i := 0; i < maxOps; i++ {
				if err := op(ctx, i*cfg.Parallel+w); err != nil {
					errs[w] = err
					return
				}
				counts[w]++
				if i&7 == 7 && time.Now().After(deadline) {
					return
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	total := 0
	for w := range counts {
		if errs[w] != nil {
			return 0, fmt.Errorf("%s %s: throughput worker %d: %w", row.Tier, sizeName(row.Size), w, errs[w])
		}
		total += counts[w]
	}
	return float64(total) * float64(row.Size) / elapsed.Seconds() / 1e6, nil
}

// setLatencies stores the sorted samples and their summary.
func (row *Row) setLatencies(lat []time.Duration) {
	slices.Sort(lat)
	row.lat = lat
	row.Samples = len(lat)
	if len(lat) == 0 {
		return
	}
	var sum time.Duration
	for _, d := range lat {
		sum += d
	}
	row.MinUS = us(lat[0])
	row.MaxUS = us(lat[len(lat)-1])
	row.MeanUS = us(sum / time.Duration(len(lat)))
	row.P1US = us(percentile(lat, 0.01))
	row.P50US = us(percentile(lat, 0.50))
	row.P90US = us(percentile(lat, 0.90))
	row.P99US = us(percentile(lat, 0.99))
	row.P999US = us(percentile(lat, 0.999))
}

// percentile returns the q-quantile of sorted samples (nearest rank).
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// sizeName renders a page size as 4KiB, 64KiB, 1MiB.
func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// pick returns a pseudo-random index in [0, n) for call i: a fixed
// mixing of i, so every worker and every run reads the same sequence
// without allocating or sharing a random source.
func pick(i, n int) int {
	x := uint64(i)*0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019
	x ^= x >> 31
	x *= 0xBF58476D1CE4E5B9
	x ^= x >> 29
	return int(x % uint64(n))
}

// setMeasurement fills the row from a measurement made outside this
// package.
func (row *Row) setMeasurement(m Measurement) {
	row.Samples = m.Samples
	row.MinUS, row.P1US, row.P50US, row.P90US = m.MinUS, m.P1US, m.P50US, m.P90US
	row.P99US, row.P999US, row.MaxUS, row.MeanUS = m.P99US, m.P999US, m.MaxUS, m.MeanUS
	row.MBps = m.MBps
	row.Command, row.Note = m.Command, m.Note
}
