package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/datenlord/datenlord-go/cluster/clustertest"
)

// benchClients is the number of concurrent clients of the metadata
// benchmark, spread over the nodes' mounts.
const benchClients = 6

// BenchmarkMetadata is acceptance 6: creates/s and stats/s from
// benchClients concurrent clients on a 3-voter cluster (clients spread over
// the three mounts), next to the single-node file system (no --peers) in
// the same run. The kernel's attribute and entry caches are off
// (--attr-timeout 0 --entry-timeout 0) so that every stat reaches the
// metadata service instead of being answered by the kernel. Run it with:
//
//	go test -run '^$' -bench Metadata -benchtime 2000x ./cluster/
func BenchmarkMetadata(b *testing.B) {
	for _, setup := range []struct {
		name string
		opts clustertest.Options
	}{
		{"single-node", clustertest.Options{Standalone: true, Args: benchArgs()}},
		{"3-voters", clustertest.Options{Args: benchArgs()}},
	} {
		b.Run(setup.name, func(b *testing.B) {
			c := clustertest.New(b, setup.opts)
			nodes := c.Nodes()
			for i := 0; i < benchClients; i++ {
				dir := filepath.Join(nodes[i%len(nodes)].Mountpoint(), fmt.Sprintf("bench-c%d", i))
				if err := os.Mkdir(dir, 0o755); err != nil {
					b.Fatal(err)
				}
			}
			var created atomic.Int64 // files created so far, for the stat benchmark
			b.Run("create", func(b *testing.B) {
				base := created.Load()
				runClients(b, func(client, i int) error {
					name := filepath.Join(nodes[client%len(nodes)].Mountpoint(), fmt.Sprintf("bench-c%d/f%d", client, base+int64(i)))
					f, err := os.OpenFile(name, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
					if err != nil {
						return err
					}
					return f.Close()
				}, "creates/s")
				created.Store(base + int64((b.N+benchClients-1)/benchClients))
			})
			b.Run("stat", func(b *testing.B) {
				n := created.Load()
				if n == 0 {
					b.Skip("no files created")
				}
				runClients(b, func(client, i int) error {
					// Stat the files another client created on another mount.
					other := (client + 1) % benchClients
					name := filepath.Join(nodes[client%len(nodes)].Mountpoint(), fmt.Sprintf("bench-c%d/f%d", other, int64(i)%n))
					_, err := os.Stat(name)
					return err
				}, "stats/s")
			})
		})
	}
}

// benchArgs turn the kernel's metadata caches off.
func benchArgs() []string { return []string{"--attr-timeout", "0", "--entry-timeout", "0"} }

// runClients runs b.N operations split over benchClients goroutines and
// reports their rate as unit.
func runClients(b *testing.B, op func(client, i int) error, unit string) {
	per := (b.N + benchClients - 1) / benchClients
	var wg sync.WaitGroup
	errs := make(chan error, benchClients)
	b.ResetTimer()
	start := time.Now()
	for c := 0; c < benchClients; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < per; i++ {
				if err := op(c, i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(per*benchClients)/elapsed.Seconds(), unit)
}
