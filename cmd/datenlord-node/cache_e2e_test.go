package main

import (
	"bufio"
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/datenlord/datenlord-go/store/s3test"
)

// s3Env is the environment that gives a node srv's credentials, and keeps
// the AWS SDK away from the user's ~/.aws files.
func s3Env(t *testing.T, srv *s3test.Server) []string {
	none := filepath.Join(t.TempDir(), "none")
	return []string{
		"AWS_ACCESS_KEY_ID=" + srv.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + srv.SecretKey,
		"AWS_REGION=" + srv.Region,
		"AWS_CONFIG_FILE=" + none,
		"AWS_SHARED_CREDENTIALS_FILE=" + none,
	}
}

// scrapeCounter sums the samples of the counter name at addr's /metrics
// whose labels include every label="value" pair of want.
func scrapeCounter(t *testing.T, addr, name string, want ...string) float64 {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
next:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		for _, w := range want {
			if !strings.Contains(line, w) {
				continue next
			}
		}
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		sum += v
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read /metrics: %v", err)
	}
	return sum
}

// hashFile reads path through a fresh descriptor, after dropping the
// kernel's page cache of it so the file system serves every byte, and
// returns the SHA-256 and the size.
func hashFile(t *testing.T, path string) (string, int64) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Logf("fadvise DONTNEED: %v", err)
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return fmt.Sprintf("%x", h.Sum(nil)), n
}

// writeStream writes n pseudo-random bytes (seeded) to path with fsync and
// returns their SHA-256.
func writeStream(t *testing.T, path string, n int64, seed uint64) string {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	var h hash.Hash = sha256.New()
	src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{byte(seed)}), n), h)
	buf := make([]byte, 1<<20)
	if _, err := io.CopyBuffer(struct{ io.Writer }{f}, src, buf); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("fsync %s: %v", path, err)
	}
	if err := f.Close(); err != nil {
		t.Fatalf("close %s: %v", path, err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// TestWarmDiskCacheRestart is acceptance 3 with the real binary on an S3
// store (versitygw): a 256 MiB file written and read through a node whose
// memory cache is a quarter of it lands in the NVMe tier; after a restart
// of the node, re-reading the whole file makes zero store GETs, as
// datenlord_store_requests_total{op="get"} on /metrics shows.
func TestWarmDiskCacheRestart(t *testing.T) {
	requireFUSE(t)
	const size = 256 << 20
	srv := s3test.Start(t)
	env := s3Env(t, srv)
	data, mnt := dirs(t)
	addr := freeAddr(t)
	args := serveArgs(data, mnt,
		"--store", srv.URL("warm", "timeout=10s"),
		"--cache-mem", "64MiB",
		"--cache-dir", filepath.Join(t.TempDir(), "nvme"),
		"--cache-disk", "512MiB",
		"--metrics", addr)
	gets := func() float64 { return scrapeCounter(t, addr, "datenlord_store_requests_total", `op="get"`) }
	diskHits := func() float64 { return scrapeCounter(t, addr, "datenlord_cache_hits_total", `tier="disk"`) }
	drops := func() float64 { return scrapeCounter(t, addr, "datenlord_cache_write_drops_total", `tier="disk"`) }

	n := startNode(t, mnt, env, args...)
	n.waitMounted()
	file := filepath.Join(mnt, "big")
	start := time.Now()
	want := writeStream(t, file, size, 7)
	t.Logf("wrote 256 MiB in %s; %v disk write drops", time.Since(start).Round(time.Millisecond), drops())
	start = time.Now()
	if got, n := hashFile(t, file); got != want || n != size {
		t.Fatalf("read back: %d bytes, sha256 %s; want %d bytes, %s", n, got, size, want)
	}
	t.Logf("first read: %s, %v store GETs, %v disk hits, %v disk write drops so far",
		time.Since(start).Round(time.Millisecond), gets(), diskHits(), drops())
	n.stop()

	n2 := startNode(t, mnt, env, args...)
	n2.waitMounted()
	g0, h0 := gets(), diskHits()
	start = time.Now()
	if got, n := hashFile(t, file); got != want || n != size {
		t.Fatalf("read after restart: %d bytes, sha256 %s; want %d bytes, %s", n, got, size, want)
	}
	g1, h1 := gets(), diskHits()
	t.Logf("re-read after restart: %s, %v store GETs (%v before, %v after), %v disk hits",
		time.Since(start).Round(time.Millisecond), g1-g0, g0, g1, h1-h0)
	if g1 != g0 {
		t.Errorf("re-reading the cached 256 MiB file after a restart made %v store GETs; want 0", g1-g0)
	}
	if h1-h0 < size/(64<<10) {
		t.Errorf("re-read after restart: %v disk tier hits; want at least %d (every 64 KiB page)", h1-h0, size/(64<<10))
	}
	n2.stop()
}
