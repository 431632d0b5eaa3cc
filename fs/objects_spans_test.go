package fs_test

import (
	"bytes"
	"crypto/rand"
	"io"
	"testing"

	"github.com/datenlord/datenlord-go/fs"
	"github.com/datenlord/datenlord-go/fs/fstest"
	"github.com/datenlord/datenlord-go/meta"
)

// TestReadSpans reads a committed file as spans (cached pages pinned,
// partial first and last pages included) and a file with unflushed writes
// (copied), and checks every byte against ReadAt's view.
func TestReadSpans(t *testing.T) {
	h := fstest.Start(t)
	ctx := t.Context()
	x := h.FS.Files()
	data := make([]byte, 2*x.BlockSize()+70000)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	w, err := x.Create(ctx, meta.RootIno, "f", 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(ctx, data); err != nil {
		t.Fatal(err)
	}
	a, err := w.Commit(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Unflushed: a partial block written but not committed.
	if _, err := w.Write(ctx, data[:1000]); err != nil {
		t.Fatal(err)
	}
	all := append(append([]byte{}, data...), data[:1000]...)

	r, err := x.Open(ctx, a.Ino)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, c := range []struct{ off, n uint64 }{{0, uint64(len(all)) + 5}, {12345, 300000}, {uint64(len(data)) - 10, 2000}, {7, 1}} {
		scratch := make([]byte, c.n)
		spans, n, err := r.ReadSpans(ctx, c.off, scratch, nil)
		want := all[min(c.off, uint64(len(all))):min(c.off+c.n, uint64(len(all)))]
		if c.off+c.n > uint64(len(all)) {
			if err != io.EOF {
				t.Fatalf("ReadSpans(%d, %d): %v, want EOF", c.off, c.n, err)
			}
		} else if err != nil {
			t.Fatalf("ReadSpans(%d, %d): %v", c.off, c.n, err)
		}
		var got []byte
		pinned := 0
		for i := range spans {
			got = append(got, spans[i].Data...)
			if spans[i].Pinned() {
				pinned++
			}
		}
		fs.ReleaseSpans(spans)
		if n != len(want) || !bytes.Equal(got, want) {
			t.Fatalf("ReadSpans(%d, %d): %d bytes, equal %v", c.off, c.n, n, bytes.Equal(got, want))
		}
		// The committed pages were written through the cache: they are
		// pinned, not copied.
		if c.off < uint64(len(data)) && c.n > 2<<16 && pinned == 0 {
			t.Errorf("ReadSpans(%d, %d): no page pinned", c.off, c.n)
		}
	}
	w.Close()
}
