package s3gw_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/datenlord/datenlord-go/gc"
	"github.com/datenlord/datenlord-go/meta"
)

// TestMultipartMoveAndGC completes uploads whose parts are block aligned
// (the blocks move into the object: none is copied) and not aligned (the
// parts are copied), then runs the garbage collector and reads both objects
// back from the store: moved blocks must never be collected.
func TestMultipartMoveAndGC(t *testing.T) {
	e := startEnv(t, nil)
	ctx := t.Context()
	c := e.client
	bucket := "mpbucket"
	if _, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &bucket}); err != nil {
		t.Fatal(err)
	}
	md := e.h.Meta
	bs := int(md.BlockSize())
	hidden, err := md.Lookup(ctx, meta.RootIno, ".datenlord-s3")
	if err != nil {
		t.Fatal(err)
	}
	uploads, err := md.Lookup(ctx, hidden.Ino, "uploads")
	if err != nil {
		t.Fatal(err)
	}

	// upload stores parts of the given sizes and returns the data, the
	// block ids the parts hold, and the completion.
	upload := func(key string, sizes ...int) ([]byte, []meta.BlockID, func() error) {
		cr, err := c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &bucket, Key: &key})
		if err != nil {
			t.Fatal(err)
		}
		var data []byte
		var done []types.CompletedPart
		for i, n := range sizes {
			p := randBytes(t, n)
			data = append(data, p...)
			out, err := c.UploadPart(ctx, &s3.UploadPartInput{Bucket: &bucket, Key: &key, UploadId: cr.UploadId,
				PartNumber: aws.Int32(int32(i + 1)), Body: bytes.NewReader(p)})
			if err != nil {
				t.Fatal(err)
			}
			done = append(done, types.CompletedPart{PartNumber: aws.Int32(int32(i + 1)), ETag: out.ETag})
		}
		dir, err := md.Lookup(ctx, uploads.Ino, aws.ToString(cr.UploadId))
		if err != nil {
			t.Fatal(err)
		}
		var ids []meta.BlockID
		for i := range sizes {
			a, err := md.Lookup(ctx, dir.Ino, partFile(i+1))
			if err != nil {
				t.Fatal(err)
			}
			bm, err := md.Blocks(ctx, a.Ino)
			if err != nil {
				t.Fatal(err)
			}
			for j := range uint64(len(bm)) {
				ids = append(ids, bm[j].ID)
			}
		}
		return data, ids, func() error {
			_, err := c.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &bucket, Key: &key,
				UploadId: cr.UploadId, MultipartUpload: &types.CompletedMultipartUpload{Parts: done}})
			return err
		}
	}
	objectBlocks := func(key string) []meta.BlockID {
		a, err := md.Lookup(ctx, mustLookup(t, md, meta.RootIno, bucket).Ino, key)
		if err != nil {
			t.Fatal(err)
		}
		bm, err := md.Blocks(ctx, a.Ino)
		if err != nil {
			t.Fatal(err)
		}
		var ids []meta.BlockID
		for j := range uint64(len(bm)) {
			ids = append(ids, bm[j].ID)
		}
		return ids
	}

	aligned, alignedIDs, completeAligned := upload("aligned", 5<<20, 6<<20, 1234)
	if err := completeAligned(); err != nil {
		t.Fatal(err)
	}
	if got := objectBlocks("aligned"); !slicesEqual(got, alignedIDs) {
		t.Errorf("aligned parts: object blocks %v, want the parts' blocks %v (moved, not copied)", got, alignedIDs)
	}
	unaligned, unalignedIDs, completeUnaligned := upload("unaligned", 5<<20+bs/2, 1000)
	if err := completeUnaligned(); err != nil {
		t.Fatal(err)
	}
	if got := objectBlocks("unaligned"); len(got) == 0 || got[0] == unalignedIDs[0] {
		t.Errorf("unaligned parts: object blocks %v should be copies of %v", got, unalignedIDs)
	}
	for key, want := range map[string][]byte{"aligned": aligned, "unaligned": unaligned} {
		if got := e.get(t, bucket, key); !bytes.Equal(got, want) {
			t.Fatalf("%s: data differs before GC", key)
		}
	}

	// The completed uploads' parts are unlinked; wait for their purge,
	// then collect garbage and sweep the store.
	waitNoOrphans(t, md)
	col, err := gc.New(gc.Config{}, md, e.h.Store, e.h.Cache, e.h.FS)
	if err != nil {
		t.Fatal(err)
	}
	st, err := col.Collect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sw, err := col.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Only the copied (unaligned) parts' blocks were garbage.
	if st.Deleted+sw.Deleted != len(unalignedIDs) {
		t.Errorf("GC deleted %d+%d blocks, want the %d blocks of the copied parts", st.Deleted, sw.Deleted, len(unalignedIDs))
	}
	if g, err := md.Garbage(ctx, 0); err != nil || len(g) != 0 {
		t.Errorf("garbage left: %v, %v", g, err)
	}
	// Read from the store, not the cache.
	for _, key := range []string{"aligned", "unaligned"} {
		for _, id := range objectBlocks(key) {
			e.h.Cache.DropBlock(ctx, uint64(id))
		}
	}
	for key, want := range map[string][]byte{"aligned": aligned, "unaligned": unaligned} {
		if got := e.get(t, bucket, key); !bytes.Equal(got, want) {
			t.Fatalf("%s: data differs after GC", key)
		}
	}
}

func partFile(n int) string { return []string{"", "00001", "00002", "00003"}[n] }

func mustLookup(t *testing.T, md *meta.Service, parent meta.Ino, name string) meta.Attr {
	t.Helper()
	a, err := md.Lookup(context.Background(), parent, name)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func slicesEqual(a, b []meta.BlockID) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// waitNoOrphans waits until every unlinked inode is purged.
func waitNoOrphans(t *testing.T, md *meta.Service) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		o, err := md.Orphans(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(o) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("orphans left: %v", o)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
