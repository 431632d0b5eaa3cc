package fs_test

import (
	"bytes"
	"os"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/datenlord/datenlord-go/fs/fstest"
	"github.com/datenlord/datenlord-go/store/s3test"
)

// outageFailBound is how long a write+fsync may take to fail while the S3
// server is down (store timeout=1s, retries=2: a few seconds at most).
const outageFailBound = 15 * time.Second

// writeSync writes data to name with write(2), fsync(2) and close(2),
// returning the first error and how long it took to get it (or to finish).
func writeSync(name string, data []byte) (time.Duration, error) {
	start := time.Now()
	f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return time.Since(start), err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return time.Since(start), err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return time.Since(start), err
	}
	err = f.Close()
	return time.Since(start), err
}

// readUncached reads name after dropping the kernel's page cache of it,
// so that the bytes come from the file system (its cache tiers or the
// store), not from the kernel.
func readUncached(t *testing.T, name string) ([]byte, error) {
	t.Helper()
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Logf("fadvise DONTNEED %s: %v (the kernel may serve the read)", name, err)
	}
	var buf bytes.Buffer
	_, err = buf.ReadFrom(f)
	return buf.Bytes(), err
}

// TestS3Outage mounts on a real S3 server (versitygw) and stops it: files
// already cached still read correctly, a new write+fsync fails with EIO
// within a bounded time instead of hanging, a write+fsync succeeds once the
// server is back, and after a restart with cold caches every acknowledged
// file reads back byte-identical from S3.
func TestS3Outage(t *testing.T) {
	srv := s3test.Start(t)
	// One attempt is bounded by 1s and a request is tried twice: a dead
	// server costs a store request a few seconds at most.
	h := fstest.Start(t, fstest.WithS3(srv, "timeout=1s", "retries=2"), fstest.WithBlockSize(256<<10))
	acked := map[string][]byte{}

	before := randBytes(1, 1<<20+4321) // four full blocks (written behind) and a partial one
	if _, err := writeSync(h.Path("before"), before); err != nil {
		t.Fatalf("write+fsync with the server up: %v", err)
	}
	acked["before"] = before
	if got, err := readUncached(t, h.Path("before")); err != nil || !bytes.Equal(got, before) {
		t.Fatalf("read back with the server up: %d bytes, %v; want %d bytes", len(got), err, len(before))
	}

	srv.Stop()
	start := time.Now()
	got, err := readUncached(t, h.Path("before"))
	if err != nil || !bytes.Equal(got, before) {
		t.Fatalf("cached file during the outage: %d bytes (equal %v), %v; want the %d bytes written", len(got), bytes.Equal(got, before), err, len(before))
	}
	t.Logf("cached 1 MiB file read during the outage in %s", time.Since(start).Round(time.Millisecond))

	failed, err := writeSync(h.Path("during"), randBytes(2, 600<<10))
	t.Logf("write+fsync during the outage: %v after %s", err, failed.Round(time.Millisecond))
	if err == nil {
		t.Fatal("write+fsync succeeded with the S3 server down")
	}
	wantErrno(t, "write+fsync during the outage", err, syscall.EIO)
	if failed > outageFailBound {
		t.Errorf("write+fsync during the outage took %s to fail; want < %s", failed, outageFailBound)
	}

	srv.Restart()
	after := randBytes(3, 700<<10)
	if _, err := writeSync(h.Path("after"), after); err != nil {
		t.Fatalf("write+fsync after the server came back: %v", err)
	}
	acked["after"] = after

	h.Restart() // cold memory cache: everything below comes from S3
	for name, want := range acked {
		got, err := readUncached(t, h.Path(name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s after restart: %d bytes (equal %v), %v; want the %d bytes acknowledged", name, len(got), bytes.Equal(got, want), err, len(want))
		}
	}
}
