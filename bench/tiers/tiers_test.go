package tiers

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestRunTiny runs every tier at one small page size with tiny bounds and
// checks that every tier and baseline has a row, measured or skipped with
// a reason, and that the outputs render.
func TestRunTiny(t *testing.T) {
	if testing.Short() {
		t.Skip("starts nodes, a disk tier and maybe versitygw")
	}
	rep, err := Run(context.Background(), Config{
		Sizes: []int{4096}, Duration: 10 * time.Millisecond, Iterations: 50, MinSamples: 10, Parallel: 2,
		WorkingSet: 1 << 20, Dir: t.TempDir(), NoS3: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{TierMemory, BaseMemcpy, TierDiskUring, BaseRawUring, BaseFio, TierDiskPsync, BaseRawPsync, TierDiskSQPoll, BaseRawSQPoll,
		TierNeighborTCP, BaseTCP, TierNeighborRDMA, BaseIBReadLat, BaseRDMARead, TierStoreFile, BaseFilePread, TierStoreS3, BaseS3Get} {
		row, ok := rep.Find(name, 4096)
		if !ok {
			t.Errorf("no row for %s", name)
			continue
		}
		if row.Skipped == "" && (row.Samples == 0 || row.P50US <= 0 || row.P999US < row.P50US) {
			t.Errorf("%s: measured nothing: %+v", name, row)
		}
	}
	for _, name := range []string{TierMemory, TierNeighborTCP, TierStoreFile} {
		if row, _ := rep.Find(name, 4096); row.Skipped != "" || row.Ratio <= 0 || row.MBps <= 0 {
			t.Errorf("%s: want a measured row with a ratio and a throughput: %+v", name, row)
		}
	}
	var buf bytes.Buffer
	if err := WriteTable(&buf, rep); err != nil {
		t.Fatal(err)
	}
	plot := filepath.Join(t.TempDir(), "tiers.svg")
	if err := WritePlot(plot, rep); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(plot)
	if err != nil || !bytes.Contains(b[:min(len(b), 200)], []byte("<svg")) {
		t.Fatalf("plot is not an SVG (%v): %.200s", err, b)
	}
}

func TestPercentile(t *testing.T) {
	lat := make([]time.Duration, 1000)
	for i := range lat {
		lat[i] = time.Duration(i+1) * time.Microsecond
	}
	var r Row
	r.setLatencies(lat)
	if r.P50US != 500 || r.P99US != 990 || r.P999US != 999 || r.MinUS != 1 || r.MaxUS != 1000 {
		t.Fatalf("percentiles: %+v", r)
	}
}
