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
	envPeerListen = "RDMASLOT_PEER_LISTEN" // default 127.0.0.1:0
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
	listen := os.Getenv(envPeerListen)
	if listen == "" {
		listen = "127.0.0.1:0"
	}
	tr, err := tcpfallback.New(ctx, tcpfallback.Config{NodeID: "a", Listen: listen, Secret: secret, DialTimeout: 2 * time.Second, Logger: log})
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
	data := putBlocks(t, st, nblocks, 5)

	tr, err := tcpfallback.New(ctx, tcpfallback.Config{NodeID: "b", Listen: "127.0.0.1:0", Secret: secret, DialTimeout: 2 * time.Second, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	peerA := startPeer(t, dir, nblocks, tr.Addr(), "")
	defer peerA.stop()
	aAddr := peerA.await(t, "PEER-ADDR")
	b := newReaderB(t, tr, aAddr, data, st, log)
	owned, slots, nb, c, reg := b.owned, b.slots, b.nb, b.c, b.reg
	peerA.await(t, "PEER-READY")

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
	peerA.kill(t)
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

// putBlocks writes nblocks random blocks to st and returns their pages.
func putBlocks(t *testing.T, st store.Store, nblocks int, seed uint64) map[cache.PageKey][]byte {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, seed+1))
	data := map[cache.PageKey][]byte{}
	for blk := uint64(1); blk <= uint64(nblocks); blk++ {
		buf := make([]byte, block)
		for i := range buf {
			buf[i] = byte(r.Uint32())
		}
		if err := st.Put(context.Background(), blk, buf); err != nil {
			t.Fatal(err)
		}
		for i := range uint32(block / page) {
			data[cache.PageKey{Block: blk, Index: i}] = buf[int(i)*page : int(i+1)*page]
		}
	}
	return data
}

// peerProc is node "a" in its own process: this test binary re-executed
// (runPeer), reading the store in dir and serving the pages it owns.
type peerProc struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	killed bool
}

// startPeer starts the peer process; listen is its node address
// ("": a free port). stop ends it.
func startPeer(t *testing.T, dir string, nblocks int, readerAddr, listen string) *peerProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envPeerStore+"="+dir, envPeerBlocks+"="+strconv.Itoa(nblocks), envPeerReader+"="+readerAddr,
		envPeerListen+"="+listen)
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
	p := &peerProc{cmd: cmd, stdin: stdin, lines: make(chan string, 4)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if l := sc.Text(); strings.HasPrefix(l, "PEER-") {
				p.lines <- l
			}
		}
		close(p.lines)
	}()
	return p
}

// await returns the rest of the peer's next PEER- line, which must start
// with prefix.
func (p *peerProc) await(t *testing.T, prefix string) string {
	t.Helper()
	select {
	case l, ok := <-p.lines:
		if !ok || !strings.HasPrefix(l, prefix) {
			t.Fatalf("peer process: %q, want %s", l, prefix)
		}
		return strings.TrimSpace(strings.TrimPrefix(l, prefix))
	case <-time.After(60 * time.Second):
		t.Fatalf("peer process: no %s", prefix)
	}
	return ""
}

// kill ends the peer with SIGKILL and waits for it: its QPs, memory
// registrations and sockets are gone when kill returns.
func (p *peerProc) kill(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	p.killed = true
	_ = p.cmd.Wait()
}

// stop ends a peer that is still running (stdin closed, then SIGKILL).
func (p *peerProc) stop() {
	if p.killed {
		return
	}
	p.stdin.Close()
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
	p.killed = true
}

// TestPeerRestartReconnects: B reads A's pages by RDMA READ; A (another
// process) is killed, and restarted at the same address with a new QP and
// new memory registrations of a new arena. Readers run all along and
// every byte they see is correct. While A is dead, B's neighbor tier
// serves nothing (every read falls back to B's store) and at least one
// RDMA READ fails on the old QP. After the restart B reconnects by
// itself: a second QP is set up (Stats.Connects 1 -> 2), and then a full
// pass over A's pages is served by RDMA READs alone (reads{rdma} rises by
// the page count, reads{tcp} and the READ failures do not).
func TestPeerRestartReconnects(t *testing.T) {
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
	data := putBlocks(t, st, nblocks, 7)

	tr, err := tcpfallback.New(ctx, tcpfallback.Config{NodeID: "b", Listen: "127.0.0.1:0", Secret: secret, DialTimeout: 2 * time.Second, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	peerA := startPeer(t, dir, nblocks, tr.Addr(), "")
	defer func() { peerA.stop() }()
	aAddr := peerA.await(t, "PEER-ADDR")
	b := newReaderB(t, tr, aAddr, data, st, log)
	owned, slots, nb, c, reg := b.owned, b.slots, b.nb, b.c, b.reg
	peerA.await(t, "PEER-READY")

	// pass reads every page of A's through the neighbor tier; it returns
	// how many the tier served (the rest B's Cache read from the store).
	// Every byte is compared.
	pass := func(phase string) (hits int) {
		t.Helper()
		buf := make([]byte, page)
		for _, k := range owned {
			clear(buf)
			n, ok, err := nb.GetSized(ctx, k, page, buf, cache.AccessRandom)
			if err == nil && ok {
				hits++
			} else {
				n, err = c.ReadPage(ctx, k, page, buf, cache.AccessRandom)
			}
			if err != nil || !bytes.Equal(buf[:n], data[k]) {
				t.Fatalf("%s: read %v: err=%v, bytes equal %v", phase, k, err, bytes.Equal(buf[:n], data[k]))
			}
		}
		return hits
	}
	if hits := pass("before the kill"); hits != len(owned) || slots.Stats().Connects != 1 || reads(reg, "tcp") != 0 {
		t.Fatalf("before the kill: %d of %d pages from the neighbor, stats %+v, reads{tcp}=%v", hits, len(owned), slots.Stats(), reads(reg, "tcp"))
	}

	// Background readers across the kill, the restart and the reconnect.
	var stop atomic.Bool
	var total, wrong atomic.Int64
	var wg sync.WaitGroup
	for g := range 2 {
		wg.Go(func() {
			buf := make([]byte, page)
			for i := g; !stop.Load(); i++ {
				k := owned[i%len(owned)]
				clear(buf)
				n, ok, err := nb.GetSized(ctx, k, page, buf, cache.AccessRandom)
				if err != nil || !ok {
					n, err = c.ReadPage(ctx, k, page, buf, cache.AccessRandom)
				}
				total.Add(1)
				if err != nil || !bytes.Equal(buf[:n], data[k]) {
					wrong.Add(1)
					t.Errorf("background read %v: err=%v, bytes equal %v", k, err, bytes.Equal(buf[:n], data[k]))
				}
			}
		})
	}
	defer func() { stop.Store(true); wg.Wait() }()

	before := slots.Stats()
	peerA.kill(t)
	downHits := 0
	for range 3 {
		downHits += pass("while A is dead")
	}
	down := slots.Stats()
	if downHits != 0 {
		t.Errorf("the neighbor tier served %d pages while their owner's process was dead", downHits)
	}
	if down.Failures == before.Failures {
		t.Errorf("no RDMA READ failed on the dead peer's QP (stats %+v -> %+v)", before, down)
	}

	restartedAt := time.Now()
	peerA = startPeer(t, dir, nblocks, tr.Addr(), aAddr)
	if got := peerA.await(t, "PEER-ADDR"); got != aAddr {
		t.Fatalf("the restarted peer listens on %s, want %s", got, aAddr)
	}
	peerA.await(t, "PEER-READY")
	ready := time.Now()

	// B reconnects by itself; reads meanwhile fall back over TCP or to
	// the store, with correct bytes.
	var reconnected time.Duration
	for deadline := time.Now().Add(30 * time.Second); ; {
		pass("reconnecting")
		if st := slots.Stats(); st.Connects >= 2 && st.Reads > down.Reads && slots.Connected(aAddr) {
			reconnected = time.Since(ready)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new QP to the restarted peer after 30s: stats %+v, connected %v, peer down %v", slots.Stats(), slots.Connected(aAddr), nb.PeerDown("a"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	stop.Store(true)
	wg.Wait()
	pass("after the reconnect") // locations looked up again where the new arena differs
	st1, rdma1, tcp1 := slots.Stats(), reads(reg, "rdma"), reads(reg, "tcp")
	hits := pass("over the new QP")
	st2, rdma2, tcp2 := slots.Stats(), reads(reg, "rdma"), reads(reg, "tcp")
	fmt.Printf("PEER-RESTART connects=%d rdma_reads=%d->%d->%d rdma_failures=%d->%d->%d reads{rdma}=%v->%v reads{tcp}=%v->%v background_reads=%d wrong=%d restart_to_ready=%v ready_to_rdma=%v\n",
		st2.Connects, before.Reads, down.Reads, st2.Reads, before.Failures, down.Failures, st2.Failures, rdma1, rdma2, tcp1, tcp2,
		total.Load(), wrong.Load(), ready.Sub(restartedAt).Round(time.Millisecond), reconnected.Round(time.Millisecond))
	if hits != len(owned) || st2.Reads-st1.Reads != uint64(len(owned)) || st2.Failures != st1.Failures || rdma2-rdma1 != float64(len(owned)) || tcp2 != tcp1 {
		t.Fatalf("a pass over the %d pages after the reconnect: %d from the neighbor, %d RDMA READs (%d failed), reads{rdma} +%v, reads{tcp} +%v",
			len(owned), hits, st2.Reads-st1.Reads, st2.Failures-st1.Failures, rdma2-rdma1, tcp2-tcp1)
	}
	if st2.Connects < 2 {
		t.Fatalf("QPs set up: %d, want a second one to the restarted peer", st2.Connects)
	}
	if total.Load() == 0 || wrong.Load() != 0 {
		t.Fatalf("background readers: %d reads, %d wrong", total.Load(), wrong.Load())
	}
	t.Logf("peer restarted: B reconnected (QP %d) %v after the new peer was ready; %d pages by RDMA READ over the new QP, %d background reads all correct",
		st2.Connects, reconnected.Round(time.Millisecond), len(owned), total.Load())
}

// readerB is node B of the process tests: an RDMA slot reader and a
// neighbor tier on B's transport with peer A at aAddr, and a cache in front
// of the store; owned are the pages that A owns. Everything is closed at
// the end of the test.
type readerB struct {
	owned []cache.PageKey
	slots *rdmaslot.Transport
	nb    *cache.NeighborTier
	c     *cache.Cache
	reg   *prometheus.Registry
}

func newReaderB(t *testing.T, tr *tcpfallback.Transport, aAddr string, data map[cache.PageKey][]byte, st store.Store, log *slog.Logger) *readerB {
	t.Helper()
	b := &readerB{reg: prometheus.NewRegistry()}
	members := cache.StaticMembership{{ID: "a", Addr: aAddr}, {ID: "b", Addr: tr.Addr()}}
	for k := range data {
		if o, _ := cache.OwnerOf(members, k); o.ID == "a" {
			b.owned = append(b.owned, k)
		}
	}
	dev, err := rdma.Open(rdma.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	b.slots, err = rdmaslot.New(rdmaslot.Config{Node: tr, Device: dev, SlotBytes: cache.SlotHeaderSize + page,
		QP: rdma.QPConfig{TimeoutExponent: 10, RetryCount: 2}, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.slots.Close() })
	b.nb, err = cache.NewNeighborTier(cache.NeighborConfig{Self: "b", Membership: members, Transport: b.slots, TransportName: "rdma",
		PageSize: page, BlockSize: block, CallTimeout: 2 * time.Second, Registerer: b.reg, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.nb.Close() })
	b.c, err = cache.New(cache.Config{PageSize: page, MemBytes: 16 << 20, Registerer: b.reg, Logger: log}, st, b.nb)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.c.Close() })
	return b
}
