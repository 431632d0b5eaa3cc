package store

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/datenlord/datenlord-go/store/s3test"
)

// BenchmarkS3ReadAt compares ranged-GET read throughput of the S3 store
// with a plain AWS SDK GetObject loop at the same concurrency, against the
// same versitygw in the same run: the store's semaphore, retry loop and
// range checks should cost next to nothing.
//
//	go test -run '^$' -bench S3ReadAt -benchtime 200x ./store/
func BenchmarkS3ReadAt(b *testing.B) {
	const (
		blocks      = 8
		blockSize   = 4 << 20
		readSize    = 1 << 20
		concurrency = 8
	)
	ctx := context.Background()
	srv := s3test.Start(b)
	s, err := Open(ctx, srv.URL("bench", fmt.Sprintf("concurrency=%d", concurrency)),
		Options{S3: S3Options{AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey}})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for id := range uint64(blocks) {
		if err := s.Put(ctx, id, storetestPattern(blockSize)); err != nil {
			b.Fatal(err)
		}
	}
	st := s.(*S3Store)
	raw := srv.Client()
	readRaw := func(id uint64, off int64, buf []byte) error {
		out, err := raw.GetObject(ctx, &s3.GetObjectInput{
			Bucket: aws.String(srv.Bucket),
			Key:    aws.String(st.key(id)),
			Range:  aws.String(fmt.Sprintf("bytes=%d-%d", off, off+int64(len(buf))-1)),
		})
		if err != nil {
			return err
		}
		defer out.Body.Close()
		_, err = io.ReadFull(out.Body, buf)
		return err
	}
	// Warm both: connections open, the server's page cache full.
	warm := make([]byte, readSize)
	for id := range uint64(blocks) {
		if _, err := s.ReadAt(ctx, id, 0, warm); err != nil {
			b.Fatal(err)
		}
		if err := readRaw(id, 0, warm); err != nil {
			b.Fatal(err)
		}
	}

	run := func(b *testing.B, read func(id uint64, off int64, buf []byte) error) {
		var next atomic.Int64
		var wg sync.WaitGroup
		b.ResetTimer()
		start := time.Now()
		for range concurrency {
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, readSize)
				for next.Add(1) <= int64(b.N) {
					id := rand.Uint64N(blocks)
					off := rand.Int64N(blockSize/readSize) * readSize
					if err := read(id, off, buf); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		elapsed := time.Since(start)
		b.StopTimer()
		b.ReportMetric(float64(b.N)*readSize/1e6/elapsed.Seconds(), "MB/s")
	}

	b.Run("store", func(b *testing.B) {
		run(b, func(id uint64, off int64, buf []byte) error {
			n, err := s.ReadAt(ctx, id, off, buf)
			if err == nil && n != len(buf) {
				err = fmt.Errorf("short read %d", n)
			}
			return err
		})
	})
	b.Run("raw-sdk", func(b *testing.B) { run(b, readRaw) })
}
