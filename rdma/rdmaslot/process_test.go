package rdmaslot_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/rdma"
	"github.com/datenlord/datenlord-go/rdma/rdmaslot"
	"github.com/datenlord/datenlord-go/store"
	"github.com/datenlord/datenlord-go/tcpfallback"
)

// Environment of the peer process (the test binary re-executed): the
// store directory, the number of blocks in it and the reader's address.
const (
	envPeerStore  = "RDMASLOT_PEER_STORE"
	envPeerBlocks = "RDMASLOT_PEER_BLOCKS"
	envPeerReader = "RDMASLOT_PEER_READER"
)

// TestMain runs the owner node of TestPeerProcessKilledMidRead when the
// test binary is re-executed as that peer.
func TestMain(m *testing.M) {
	if os.Getenv(envPeerStore) != "" {
		if err := runPeer(); err != nil {
			fmt.Fprintln(os.Stderr, "rdmaslot peer:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runPeer is node "a" in its own process: it caches the pages it owns,
// serves them (requests over tcpfallback, slots by RDMA), prints
// PEER-ADDR and PEER-READY, and runs until its stdin closes or it is
// killed.
func runPeer() error {
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("proc", "peer")
	nblocks, err := strconv.Atoi(os.Getenv(envPeerBlocks))
	if err != nil {
		return err
	}
	st, err := store.Open(ctx, "file://"+os.Getenv(envPeerStore), store.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	tr, err := tcpfallback.New(ctx, tcpfallback.Config{NodeID: "a", Listen: "127.0.0.1:0", Secret: secret, DialTimeout: 2 * time.Second, Logger: log})
	if err != nil {
		return err
	}
	defer tr.Close()
	fmt.Printf("PEER-ADDR %s\n", tr.Addr())
	members := cache.StaticMembership{{ID: "a", Addr: tr.Addr()}, {ID: "b", Addr: os.Getenv(envPeerReader)}}
	dev, err := rdma.Open(rdma.Config{})
	if err != nil {
		return err
	}
	defer dev.Close()
	slots, err := rdmaslot.New(rdmaslot.Config{Node: tr, Device: dev, SlotBytes: cache.SlotHeaderSize + page,
		QP: rdma.QPConfig{TimeoutExponent: 10, RetryCount: 2}, Logger: log})
	if err != nil {
		return err
	}
	defer slots.Close()
	nb, err := cache.NewNeighborTier(cache.NeighborConfig{Self: "a", Membership: members, Transport: slots, TransportName: "rdma",
		PageSize: page, BlockSize: block, CallTimeout: 2 * time.Second, Logger: log})
	if err != nil {
		return err
	}
	defer nb.Close()
	c, err := cache.New(cache.Config{PageSize: page, MemBytes: 16 << 20, Logger: log}, st, nb)
	if err != nil {
		return err
	}
	defer c.Close()
	dst := make([]byte, page)
	for blk := uint64(1); blk <= uint64(nblocks); blk++ {
		for i := range uint32(block / page) {
			k := cache.PageKey{Block: blk, Index: i}
			if o, _ := cache.OwnerOf(members, k); o.ID == "a" {
				if _, err := c.ReadPage(ctx, k, page, dst, cache.AccessRandom); err != nil {
					return err
				}
			}
		}
	}
	if err := nb.Serve(c); err != nil {
		return err
	}
	slots.Serve(c)
	fmt.Println("PEER-READY")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}

// TestPeerProcessKilledMidRead: the owner is another process (this test
// binary re-executed); B reads A's pages by RDMA READ from several
// goroutines, and A is killed with SIGKILL while they read. Every read
// that the neighbor tier cannot serve any more falls back (B's Cache
// reads the store), and every byte the readers see is correct; B counts
// failed RDMA READs or marks A down, and its reads after the kill
// succeed.
func TestPeerProcessKilledMidRead(t *testing.T) {
	openOrSkip(t).Close()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	dir := t.TempDir()
	st, err := store.Open(ctx, "file://"+dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	const nblocks = 8
	r := rand.New(rand.NewPCG(5, 6))
	data := map[cache.PageKey][]byte{}
	for blk := uint64(1); blk <= nblocks; blk++ {
		buf := make([]byte, block)
		for i := range buf {
			buf[i] = byte(r.Uint32())
		}
		if err := st.Put(ctx, blk, buf); err != nil {
			t.Fatal(err)
		}
		for i := range uint32(block / page) {
			data[cache.PageKey{Block: blk, Index: i}] = buf[int(i)*page : int(i+1)*page]
		}
	}

	tr, err := tcpfallback.New(ctx, tcpfallback.Config{NodeID: "b", Listen: "127.0.0.1:0", Secret: secret, DialTimeout: 2 * time.Second, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envPeerStore+"="+dir, envPeerBlocks+"="+strconv.Itoa(nblocks), envPeerReader+"="+tr.Addr())
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	defer func() {
		stdin.Close()
		if !killed {
			_ = cmd.Process.Kill()
		}
		_ = cmd.Wait()
	}()
	lines := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if l := sc.Text(); strings.HasPrefix(l, "PEER-") {
				lines <- l
			}
		}
		close(lines)
	}()
	await := func(prefix string) string {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok || !strings.HasPrefix(l, prefix) {
				t.Fatalf("peer process: %q, want %s", l, prefix)
			}
			return strings.TrimSpace(strings.TrimPrefix(l, prefix))
		case <-time.After(60 * time.Second):
			t.Fatalf("peer process: no %s", prefix)
		}
		return ""
	}
	aAddr := await("PEER-ADDR")
	members := cache.StaticMembership{{ID: "a", Addr: aAddr}, {ID: "b", Addr: tr.Addr()}}
	var owned []cache.PageKey
	for k := range data {
		if o, _ := cache.OwnerOf(members, k); o.ID == "a" {
			owned = append(owned, k)
		}
	}

	dev, err := rdma.Open(rdma.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	slots, err := rdmaslot.New(rdmaslot.Config{Node: tr, Device: dev, SlotBytes: cache.SlotHeaderSize + page,
		QP: rdma.QPConfig{TimeoutExponent: 10, RetryCount: 2}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer slots.Close()
	reg := prometheus.NewRegistry()
	nb, err := cache.NewNeighborTier(cache.NeighborConfig{Self: "b", Membership: members, Transport: slots, TransportName: "rdma",
		PageSize: page, BlockSize: block, CallTimeout: 2 * time.Second, Registerer: reg, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer nb.Close()
	c, err := cache.New(cache.Config{PageSize: page, MemBytes: 16 << 20, Registerer: reg, Logger: log}, st, nb)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	await("PEER-READY")

	// Warm-up: every page of A's once, by RDMA.
	dst := make([]byte, page)
	for _, k := range owned {
		n, ok, err := nb.GetSized(ctx, k, page, dst, cache.AccessRandom)
		if err != nil || !ok || !bytes.Equal(dst[:n], data[k]) {
			t.Fatalf("warm-up read of %v from the peer process: ok=%v err=%v", k, ok, err)
		}
	}
	if got, tcp := reads(reg, "rdma"), reads(reg, "tcp"); got != float64(len(owned)) || tcp != 0 {
		t.Fatalf("warm-up of %d pages: reads{rdma}=%v reads{tcp}=%v", len(owned), got, tcp)
	}

	// Readers: the neighbor tier, then (on a miss) the application's
	// Cache, which falls back to the store; every byte is compared.
	var stop atomic.Bool
	var total, neighborHits, fallbacks, wrong atomic.Int64
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, page)
			for i := g; !stop.Load(); i++ {
				k := owned[i%len(owned)]
				clear(buf)
				n, ok, err := nb.GetSized(ctx, k, page, buf, cache.AccessRandom)
				if err == nil && ok {
					neighborHits.Add(1)
				} else {
					fallbacks.Add(1)
					n, err = c.ReadPage(ctx, k, page, buf, cache.AccessRandom)
				}
				total.Add(1)
				if err != nil || !bytes.Equal(buf[:n], data[k]) {
					wrong.Add(1)
					t.Errorf("read %v: err=%v, bytes equal %v", k, err, bytes.Equal(buf[:n], data[k]))
				}
			}
		}()
	}
	time.Sleep(200 * time.Millisecond) // READs in flight
	before := slots.Stats()
	hitsBefore := neighborHits.Load()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed = true
	_ = cmd.Wait()
	killedAt := time.Now()
	totalAtKill := total.Load()
	time.Sleep(3 * time.Second)
	stop.Store(true)
	wg.Wait()
	after := slots.Stats()
	fmt.Printf("PEER-KILL reads=%d (at kill %d) neighbor_hits=%d (before kill %d) fallbacks=%d wrong=%d rdma_reads=%d->%d rdma_failures=%d->%d peer_down=%v reads{rdma}=%v reads{tcp}=%v\n",
		total.Load(), totalAtKill, neighborHits.Load(), hitsBefore, fallbacks.Load(), wrong.Load(),
		before.Reads, after.Reads, before.Failures, after.Failures, nb.PeerDown("a"), reads(reg, "rdma"), reads(reg, "tcp"))
	if hitsBefore == 0 {
		t.Error("no neighbor reads before the kill: nothing was in flight")
	}
	if after.Failures == before.Failures && !nb.PeerDown("a") {
		t.Error("the kill went unnoticed: no failed RDMA READ and the peer is not marked down")
	}
	if fallbacks.Load() == 0 {
		t.Error("no read fell back after the peer process was killed")
	}
	if total.Load() == totalAtKill {
		t.Error("no reads completed after the kill")
	}
	// After the kill the application still reads every page correctly.
	for _, k := range owned {
		n, err := c.ReadPage(ctx, k, page, dst, cache.AccessRandom)
		if err != nil || !bytes.Equal(dst[:n], data[k]) {
			t.Fatalf("after the kill, read %v: %v", k, err)
		}
	}
	t.Logf("peer process killed mid-read: %d reads, %d after the kill, %d fell back, all bytes correct; RDMA READ failures %d; %v from kill to end",
		total.Load(), total.Load()-totalAtKill, fallbacks.Load(), after.Failures-before.Failures, time.Since(killedAt).Round(time.Millisecond))
}
