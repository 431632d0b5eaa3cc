package s3gw_test

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/datenlord/datenlord-go/fs/fstest"
)

// TestGetUnderEvictionPressure streams whole and ranged GETs of objects
// far larger than the memory tier from several clients at once, over HTTP
// (bodies written from pinned cache pages with writev) and HTTPS (written
// page by page), while the others' reads evict: every body must match
// byte for byte (a pinned page is never reused while a response writes
// from it).
func TestGetUnderEvictionPressure(t *testing.T) {
	for _, tlsOn := range []bool{false, true} {
		t.Run(fmt.Sprint("tls=", tlsOn), func(t *testing.T) {
			tc := selfSigned(t)
			if !tlsOn {
				tc = nil
			}
			// 40 pages of 64 KiB: a twentieth of the data.
			e := startEnv(t, tc, fstest.WithCacheBytes(40*(64<<10+64)))
			ctx := t.Context()
			if _, err := e.client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("pins")}); err != nil {
				t.Fatal(err)
			}
			sizes := []int{3 << 20, 3<<20 + 12345, 2<<20 - 1, 1 << 20, 4<<20 + 65536}
			objs := make([][]byte, len(sizes))
			for i, n := range sizes {
				objs[i] = randBytes(t, n)
				e.put(t, "pins", fmt.Sprint("o", i), objs[i])
			}
			var wg sync.WaitGroup
			for g := range 4 {
				wg.Go(func() {
					for i := range 12 {
						k := (g + i) % len(objs)
						want := objs[k]
						in := &s3.GetObjectInput{Bucket: aws.String("pins"), Key: aws.String(fmt.Sprint("o", k))}
						if i%3 == 2 { // a range with unaligned ends
							start, end := 1000*(g+1)+i, len(want)-777*(i+1)
							in.Range = aws.String(fmt.Sprintf("bytes=%d-%d", start, end-1))
							want = want[start:end]
						}
						out, err := e.client.GetObject(ctx, in)
						if err != nil {
							t.Errorf("get o%d: %v", k, err)
							return
						}
						got, err := io.ReadAll(out.Body)
						out.Body.Close()
						if err != nil || !bytes.Equal(got, want) {
							t.Errorf("get o%d (%v): %d bytes, want %d, equal %v, err %v", k, in.Range, len(got), len(want), bytes.Equal(got, want), err)
							return
						}
					}
				})
			}
			wg.Wait()
		})
	}
}
