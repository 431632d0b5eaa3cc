package rdmabench_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/datenlord/datenlord-go/bench/tiers"
	"github.com/datenlord/datenlord-go/bench/tiers/tierstest"
	"github.com/datenlord/datenlord-go/rdma/rdmabench"
	"github.com/datenlord/datenlord-go/tcpfallback"
)

// TestParseIBReadLat reads a report ib_read_lat -s 4096 -n 20 -F -H
// printed on rxe in the test guest: the summary line's figures, and p1,
// p90 and the count from the 17 samples -H listed.
func TestParseIBReadLat(t *testing.T) {
	out := []byte(ibReadLat4096)
	m, err := rdmabench.ParseIBReadLat(out, 4096)
	if err != nil {
		t.Fatal(err)
	}
	want := tiers.Measurement{Samples: 17, MinUS: 77.80, P1US: 77.7958, P50US: 79.53, P90US: 92.9183, P99US: 174.36, P999US: 174.36,
		MaxUS: 174.36, MeanUS: 86.15}
	if m != want {
		t.Fatalf("parsed %+v\nwant   %+v", m, want)
	}
	if _, err := rdmabench.ParseIBReadLat(out, 65536); err == nil {
		t.Error("a report of 4096-byte READs parsed as one of 65536")
	}
	if _, err := rdmabench.ParseIBReadLat([]byte("Couldn't connect to 127.0.0.1:18515\n"), 4096); err == nil {
		t.Error("a failed run's output parsed")
	}
}

// TestAvailableWithoutDevice: on a host without an RDMA device (or a
// build without cgo) the hook says why the rows are skipped.
func TestAvailableWithoutDevice(t *testing.T) {
	if tiers.HasRDMADevice() {
		t.Skip("this host has an RDMA device: TestRDMARows covers it")
	}
	ok, reason := rdmabench.New(rdmabench.Config{}).Available()
	if ok || !strings.Contains(reason, "no RDMA") {
		t.Fatalf("Available() = %v, %q; want false, no RDMA device / no RDMA in this build", ok, reason)
	}
}

// TestRDMARows runs bench tiers' neighbor/rdma group with the hook at
// 4 KiB, with tiny bounds: the tier row is measured (every read checked to
// have come by RDMA READ), the ib_read_lat row is perftest's report, the
// rdma-read row the bare QP.Read, and the tier's ratio to ib_read_lat is
// set.
func TestRDMARows(t *testing.T) {
	hook := requireRDMA(t)
	rep, err := tiers.Run(context.Background(), tiers.Config{
		Sizes: []int{4096}, Duration: 50 * time.Millisecond, Iterations: 300, MinSamples: 100, Parallel: 2,
		WorkingSet: 256 << 10, Dir: t.TempDir(), NoS3: true, Only: []string{tiers.TierNeighborRDMA}, RDMA: hook,
	})
	if err != nil {
		t.Fatal(err)
	}
	tier, ok := rep.Find(tiers.TierNeighborRDMA, 4096)
	if !ok || tier.Skipped != "" || tier.Samples < 100 || tier.P50US <= 0 || tier.MBps <= 0 {
		t.Fatalf("neighbor/rdma row: %+v", tier)
	}
	base, ok := rep.Find(tiers.BaseIBReadLat, 4096)
	if !ok || base.Skipped != "" || base.P50US <= 0 || !strings.HasPrefix(base.Command, "ib_read_lat ") {
		t.Fatalf("ib_read_lat row: %+v", base)
	}
	if tier.Ratio <= 0 || tier.Baseline != tiers.BaseIBReadLat {
		t.Fatalf("no ratio to ib_read_lat: %+v", tier)
	}
	raw, ok := rep.Find(tiers.BaseRDMARead, 4096)
	if !ok || raw.Skipped != "" || raw.Samples < 100 || raw.P50US <= 0 {
		t.Fatalf("rdma-read row: %+v", raw)
	}
	fmt.Printf("RDMA-LAT bench-neighbor-rdma size=4096 p50_us=%.2f p99_us=%.2f\n", tier.P50US, tier.P99US)
	t.Logf("neighbor/rdma p50 %.1fµs, rdma-read p50 %.1fµs, ib_read_lat p50 %.1fµs (%d samples, %s): ratio %.2f",
		tier.P50US, raw.P50US, base.P50US, base.Samples, base.Command, tier.Ratio)
}

// requireRDMA returns the hook, or skips loudly where this host cannot
// measure RDMA (fails where DATENLORD_RDMA_REQUIRED is set: the guest).
func requireRDMA(t *testing.T) *rdmabench.Hook {
	t.Helper()
	hook := rdmabench.New(rdmabench.Config{Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if ok, reason := hook.Available(); !ok {
		if os.Getenv("DATENLORD_RDMA_REQUIRED") != "" {
			t.Fatalf("DATENLORD_RDMA_REQUIRED is set but: %s", reason)
		}
		msg := "SKIP: " + reason + " (run make test-rdma)"
		fmt.Fprintln(os.Stderr, "!!!!", msg)
		t.Skip(msg)
	}
	return hook
}

// TestRDMARowsRemote runs the neighbor/rdma group in `bench tiers
// --addr` mode against a node in this process (its own transport,
// arena and RDMA registration, reached only through its address and the
// cluster secret): the tier row reads the node's pages by RDMA READ.
func TestRDMARowsRemote(t *testing.T) {
	hook := requireRDMA(t)
	n := tierstest.StartNode(t, 4096, 8, hook)
	tr, err := tcpfallback.New(context.Background(), tcpfallback.Config{NodeID: "bench-client", Secret: n.Secret})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	rep, err := tiers.Run(context.Background(), tiers.Config{
		Sizes: []int{4096}, Duration: 50 * time.Millisecond, Iterations: 300, MinSamples: 100, Parallel: 2,
		Dir: t.TempDir(), NoS3: true, Only: []string{tiers.TierNeighborRDMA}, RDMA: hook,
		Remote: &tiers.Remote{Addr: n.Addr, Transport: tr},
	})
	if err != nil {
		t.Fatal(err)
	}
	tier, ok := rep.Find(tiers.TierNeighborRDMA, 4096)
	if !ok || tier.Skipped != "" || tier.Samples < 100 || tier.P50US <= 0 || tier.MBps <= 0 {
		t.Fatalf("neighbor/rdma row: %+v", tier)
	}
	if base, _ := rep.Find(tiers.BaseIBReadLat, 4096); base.Skipped != "" || !strings.Contains(base.Note, n.Addr) {
		t.Fatalf("ib_read_lat row: %+v, want measured, its note naming the node", base)
	}
	fmt.Printf("RDMA-LAT bench-neighbor-rdma-remote size=4096 p50_us=%.2f p99_us=%.2f\n", tier.P50US, tier.P99US)
	t.Logf("remote neighbor/rdma p50 %.1fµs (ratio %.2f to ib_read_lat)", tier.P50US, tier.Ratio)
}

// ibReadLat4096 is what `ib_read_lat -d rxe0 -x 1 -s 4096 -n 20 -F -H -p
// 18600 127.0.0.1` printed in the soft-RoCE test guest (a constant, not
// a file: the test binary runs in the guest without the source tree).
const ibReadLat4096 = `Device not recognized to implement inline feature. Disabling it
---------------------------------------------------------------------------------------
                    RDMA_Read Latency Test
 Dual-port       : OFF		Device         : rxe0
 Number of qps   : 1		Transport type : IB
 Connection type : RC		Using SRQ      : OFF
 PCIe relax order: ON
 ibv_wr* API     : OFF
 TX depth        : 1
 Mtu             : 4096[B]
 Link type       : Ethernet
 GID index       : 1
 Outstand reads  : 128
 rdma_cm QPs	 : OFF
 Data ex. method : Ethernet
---------------------------------------------------------------------------------------
 local address: LID 0000 QPN 0x0015 PSN 0x17c94f OUT 0x80 RKey 0x0007a4 VAddr 0x0055d016696000
 GID: 00:00:00:00:00:00:00:00:00:00:255:255:127:00:00:01
 remote address: LID 0000 QPN 0x0016 PSN 0xd45a11 OUT 0x80 RKey 0x000676 VAddr 0x005576ce161000
 GID: 00:00:00:00:00:00:00:00:00:00:255:255:127:00:00:01
---------------------------------------------------------------------------------------
 #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] 
#, usec
1, 77.7958
2, 78.1263
3, 78.2965
4, 78.5769
5, 78.8373
6, 78.9675
7, 79.3581
8, 79.3881
9, 79.5283
10, 80.7401
11, 81.9119
12, 82.2925
13, 84.9564
14, 86.7891
15, 92.9183
16, 113.078
17, 132.998
---------------------------------------------------------------------------------------
 #bytes #iterations    t_min[usec]    t_max[usec]  t_typical[usec]    t_avg[usec]    t_stdev[usec]   99% percentile[usec]   99.9% percentile[usec] 
 4096    20          77.80          174.36       79.53    	       86.15       	13.96  		174.36  		174.36 
---------------------------------------------------------------------------------------
`
