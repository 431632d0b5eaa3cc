// Package storetest is the conformance suite of the store.Store contract:
// every backend (the local directory, S3) runs the same cases, so they
// behave alike where callers can tell.
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T) store.Store {
//			s, err := store.Open(ctx, "file://"+t.TempDir(), store.Options{})
//			...
//			t.Cleanup(func() { s.Close() })
//			return s
//		})
//	}
//
// open must return a new, empty store for each call (for S3: a fresh
// prefix) and close it when the test ends; Run calls it once per case.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/datenlord/datenlord-go/store"
)

// LargeBlockSize is the size of the block the suite writes to exercise
// multipart uploads: above the S3 backend's default 16 MiB part size.
const LargeBlockSize = 20 << 20

// caseTimeout bounds each case, so a hung backend fails instead of
// stalling the test binary.
const caseTimeout = 2 * time.Minute

// Run runs the conformance cases against stores made by open, each as a
// subtest.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	cases := []struct {
		name string
		fn   func(ctx context.Context, t *testing.T, s store.Store)
	}{
		{"PutReadAt", testPutReadAt},
		{"NegativeOffset", testNegativeOffset},
		{"DeleteIdempotent", testDeleteIdempotent},
		{"List", testList},
		{"Check", testCheck},
		{"ConcurrentPutRead", testConcurrentPutRead},
		{"LargeBlock", testLargeBlock},
		{"Cancelled", testCancelled},
		{"Closed", testClosed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), caseTimeout)
			defer cancel()
			s := open(t)
			if s.String() == "" {
				t.Error("String() is empty")
			}
			c.fn(ctx, t, s)
		})
	}
}

// Pattern returns n bytes that differ with seed and position, so a read
// of the wrong block or offset shows.
func Pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) + seed + byte(i>>16)
	}
	return b
}

// ListIDs returns the ids s lists, sorted.
func ListIDs(ctx context.Context, t testing.TB, s store.Store) []uint64 {
	t.Helper()
	var ids []uint64
	if err := s.List(ctx, func(id uint64) error { ids = append(ids, id); return nil }); err != nil {
		t.Fatalf("List: %v", err)
	}
	slices.Sort(ids)
	return ids
}

func mustPut(ctx context.Context, t testing.TB, s store.Store, id uint64, data []byte) {
	t.Helper()
	if err := s.Put(ctx, id, data); err != nil {
		t.Fatalf("Put 0x%x (%d bytes): %v", id, len(data), err)
	}
}

// readCase is one ReadAt and what it must return.
type readCase struct {
	name  string
	id    uint64
	off   int64
	len   int
	wantN int
	err   error
}

func checkReads(ctx context.Context, t *testing.T, s store.Store, data map[uint64][]byte, cases []readCase) {
	t.Helper()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			dst := make([]byte, tt.len)
			n, err := s.ReadAt(ctx, tt.id, tt.off, dst)
			if tt.err != nil && !errors.Is(err, tt.err) || tt.err == nil && err != nil {
				t.Fatalf("ReadAt(0x%x, %d, %d) err = %v, want %v", tt.id, tt.off, tt.len, err, tt.err)
			}
			if n != tt.wantN {
				t.Fatalf("ReadAt(0x%x, %d, %d) n = %d, want %d", tt.id, tt.off, tt.len, n, tt.wantN)
			}
			if want := data[tt.id]; n > 0 && !bytes.Equal(dst[:n], want[tt.off:tt.off+int64(n)]) {
				t.Fatalf("ReadAt(0x%x, %d, %d) returned wrong bytes", tt.id, tt.off, tt.len)
			}
		})
	}
}

func testPutReadAt(ctx context.Context, t *testing.T, s store.Store) {
	const id = 0x1234_5678_9abc_def0
	data := map[uint64][]byte{id: Pattern(100_000, 3), 7: {}, 9: {42}}
	for i, d := range data {
		mustPut(ctx, t, s, i, d)
	}
	n := len(data[id])
	checkReads(ctx, t, s, data, []readCase{
		{"whole", id, 0, n, n, nil},
		{"head", id, 0, 10, 10, nil},
		{"middle", id, 65536, 4096, 4096, nil},
		{"one byte", id, 12345, 1, 1, nil},
		{"last byte", id, int64(n - 1), 1, 1, nil},
		{"short at end", id, int64(n - 1000), 4096, 1000, nil},
		{"bigger than block", id, 0, 2 * n, n, nil},
		{"at end", id, int64(n), 10, 0, nil},
		{"past end", id, 1 << 30, 10, 0, nil},
		{"far past end", id, 1 << 62, 10, 0, nil},
		{"empty dst", id, 5, 0, 0, nil},
		{"empty block", 7, 0, 10, 0, nil},
		{"one-byte block", 9, 0, 10, 1, nil},
		{"missing", 8, 0, 10, 0, store.ErrNotFound},
		{"missing empty dst", 8, 0, 0, 0, store.ErrNotFound},
	})
}

func testNegativeOffset(ctx context.Context, t *testing.T, s store.Store) {
	mustPut(ctx, t, s, 1, []byte("abc"))
	if _, err := s.ReadAt(ctx, 1, -1, make([]byte, 1)); err == nil {
		t.Fatal("ReadAt at a negative offset succeeded")
	}
}

func testDeleteIdempotent(ctx context.Context, t *testing.T, s store.Store) {
	mustPut(ctx, t, s, 2, []byte("two"))
	mustPut(ctx, t, s, 3, []byte("three"))
	for _, id := range []uint64{2, 2, 999} { // twice, and never existed: no error
		if err := s.Delete(ctx, id); err != nil {
			t.Fatalf("Delete 0x%x: %v", id, err)
		}
	}
	if _, err := s.ReadAt(ctx, 2, 0, make([]byte, 4)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("ReadAt of a deleted block = %v, want ErrNotFound", err)
	}
	buf := make([]byte, 8)
	if n, err := s.ReadAt(ctx, 3, 0, buf); err != nil || string(buf[:n]) != "three" {
		t.Fatalf("ReadAt of a kept block = %q, %v", buf[:n], err)
	}
}

func testList(ctx context.Context, t *testing.T, s store.Store) {
	if got := ListIDs(ctx, t, s); len(got) != 0 {
		t.Fatalf("List of a new store = %v, want nothing", got)
	}
	ids := []uint64{0, 1, 2, 0x100, 0x201, 0xffff_ffff_ffff_ffff}
	for _, id := range ids {
		mustPut(ctx, t, s, id, Pattern(10, byte(id)))
	}
	if got := ListIDs(ctx, t, s); fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Fatalf("List = %x, want %x", got, ids)
	}
	if err := s.Delete(ctx, 2); err != nil {
		t.Fatal(err)
	}
	if got, want := ListIDs(ctx, t, s), []uint64{0, 1, 0x100, 0x201, 0xffff_ffff_ffff_ffff}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("List after Delete = %x, want %x", got, want)
	}
	stop := errors.New("stop")
	calls := 0
	if err := s.List(ctx, func(uint64) error { calls++; return stop }); !errors.Is(err, stop) {
		t.Fatalf("List with a failing fn = %v, want it wrapped", err)
	}
	if calls != 1 {
		t.Fatalf("List called a failing fn %d times, want 1", calls)
	}
}

func testCheck(ctx context.Context, t *testing.T, s store.Store) {
	if err := s.Check(ctx); err != nil {
		t.Fatalf("Check: %v", err)
	}
	mustPut(ctx, t, s, 5, []byte("x"))
	if err := s.Check(ctx); err != nil {
		t.Fatalf("second Check: %v", err)
	}
	if got := ListIDs(ctx, t, s); fmt.Sprint(got) != "[5]" {
		t.Fatalf("List after Check = %v, want [5]: the probe must not show", got)
	}
}

func testConcurrentPutRead(ctx context.Context, t *testing.T, s store.Store) {
	const (
		writers   = 8
		perWriter = 8
		size      = 64 << 10
	)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				id := uint64(w*perWriter + i)
				if err := s.Put(ctx, id, Pattern(size, byte(id))); err != nil {
					t.Errorf("Put 0x%x: %v", id, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for r := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 4096)
			for i := range writers * perWriter {
				id := uint64((i + r) % (writers * perWriter))
				off := int64((i * 4096) % size)
				n, err := s.ReadAt(ctx, id, off, buf)
				if err != nil || n != len(buf) || !bytes.Equal(buf, Pattern(size, byte(id))[off:off+int64(n)]) {
					t.Errorf("ReadAt 0x%x at %d: n=%d err=%v (or wrong bytes)", id, off, n, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if got := ListIDs(ctx, t, s); len(got) != writers*perWriter {
		t.Fatalf("List after concurrent puts: %d blocks, want %d", len(got), writers*perWriter)
	}
}

func testLargeBlock(ctx context.Context, t *testing.T, s store.Store) {
	const id = 0xb16
	data := map[uint64][]byte{id: Pattern(LargeBlockSize, 11)}
	mustPut(ctx, t, s, id, data[id])
	const mib = 1 << 20
	checkReads(ctx, t, s, data, []readCase{
		{"whole", id, 0, LargeBlockSize, LargeBlockSize, nil},
		{"across 16MiB", id, 16*mib - 100, 200, 200, nil},
		{"across 5MiB", id, 5*mib - 1, 2, 2, nil},
		{"short at end", id, LargeBlockSize - 10, mib, 10, nil},
		{"at end", id, LargeBlockSize, 10, 0, nil},
	})
}

func testCancelled(ctx context.Context, t *testing.T, s store.Store) {
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.Put(cctx, 1, []byte("x")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Put with a cancelled context = %v, want context.Canceled", err)
	}
	if _, err := s.ReadAt(cctx, 1, 0, make([]byte, 1)); !errors.Is(err, context.Canceled) {
		t.Fatalf("ReadAt with a cancelled context = %v, want context.Canceled", err)
	}
	if got := ListIDs(ctx, t, s); len(got) != 0 {
		t.Fatalf("a cancelled Put left blocks %v", got)
	}
}

func testClosed(ctx context.Context, t *testing.T, s store.Store) {
	mustPut(ctx, t, s, 1, []byte("x"))
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := s.ReadAt(ctx, 1, 0, make([]byte, 1)); err == nil {
		t.Fatal("ReadAt after Close succeeded")
	}
	if err := s.Put(ctx, 2, []byte("y")); err == nil {
		t.Fatal("Put after Close succeeded")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}
