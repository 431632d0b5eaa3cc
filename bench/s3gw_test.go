package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/datenlord/datenlord-go/fs/fstest"
	"github.com/datenlord/datenlord-go/internal/clientauth"
	"github.com/datenlord/datenlord-go/s3gw"
	"github.com/datenlord/datenlord-go/store/s3test"
)

// s3Target is an S3 server under test with a client and a bucket.
type s3Target struct {
	name   string
	client *s3.Client
	bucket string
}

func s3Client(endpoint, region, ak, sk string) *s3.Client {
	return s3.New(s3.Options{BaseEndpoint: aws.String(endpoint), Region: region, UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(ak, sk, "")})
}

// startGatewayTarget mounts a datenlord file system (file:// store in the
// test's temp dir) and serves it through the S3 gateway.
func startGatewayTarget(b *testing.B) s3Target {
	b.Helper()
	h := fstest.Start(b)
	g, err := s3gw.New(b.Context(), s3gw.Config{Files: h.FS.Files(), Secrets: clientauth.New("bench", "bench-secret").Secret,
		Logger: h.Opts.Logger})
	if err != nil {
		b.Fatal(err)
	}
	srv, err := s3gw.Serve("127.0.0.1:0", nil, g)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	c := s3Client("http://"+srv.Addr(), "us-east-1", "bench", "bench-secret")
	if _, err := c.CreateBucket(b.Context(), &s3.CreateBucketInput{Bucket: aws.String("bench")}); err != nil {
		b.Fatal(err)
	}
	return s3Target{name: "datenlord", client: c, bucket: "bench"}
}

// s3RoundResult is one round's throughput of a target.
type s3RoundResult struct{ putOps, getOps, putMBs, getMBs float64 }

// s3Round PUTs then GETs count objects of size bytes, one at a time, and
// returns the rates.
func s3Round(b *testing.B, t s3Target, round, count int, data []byte) s3RoundResult {
	ctx := b.Context()
	keys := make([]string, count)
	start := time.Now()
	for i := range keys {
		keys[i] = fmt.Sprintf("r%d/obj-%d", round, i)
		if _, err := t.client.PutObject(ctx, &s3.PutObjectInput{Bucket: &t.bucket, Key: &keys[i], Body: bytes.NewReader(data)}); err != nil {
			b.Fatalf("%s: put: %v", t.name, err)
		}
	}
	put := time.Since(start)
	buf := make([]byte, len(data))
	start = time.Now()
	for _, k := range keys {
		out, err := t.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &t.bucket, Key: &k})
		if err != nil {
			b.Fatalf("%s: get: %v", t.name, err)
		}
		n, err := io.ReadFull(out.Body, buf)
		out.Body.Close()
		if err != nil || n != len(data) {
			b.Fatalf("%s: get %s: %d bytes, %v", t.name, k, n, err)
		}
	}
	get := time.Since(start)
	total := float64(count * len(data))
	return s3RoundResult{
		putOps: float64(count) / put.Seconds(), getOps: float64(count) / get.Seconds(),
		putMBs: total / 1e6 / put.Seconds(), getMBs: total / 1e6 / get.Seconds(),
	}
}

// BenchmarkS3Gateway compares the datenlord S3 gateway with versitygw
// (POSIX backend) on the same machine and disk, in the same run: every
// iteration PUTs then GETs a set of objects on each server, one request at
// a time from one client. Reported are the medians over iterations of
// ops/s (4KiB) or MB/s (16MiB) for each server and datenlord/versitygw
// ratios. Run with e.g. -bench S3Gateway -benchtime 3x.
func BenchmarkS3Gateway(b *testing.B) {
	for _, bc := range []struct {
		name  string
		size  int
		count int
	}{
		{"4KiB", 4 << 10, 200},
		{"16MiB", 16 << 20, 6},
	} {
		b.Run(bc.name, func(b *testing.B) {
			data := make([]byte, bc.size)
			if _, err := rand.Read(data); err != nil {
				b.Fatal(err)
			}
			dl := startGatewayTarget(b)
			vs := s3test.Start(b)
			vg := s3Target{name: "versitygw", client: s3Client(vs.Endpoint, vs.Region, vs.AccessKey, vs.SecretKey), bucket: vs.Bucket}
			var d, v []s3RoundResult
			b.SetBytes(int64(bc.size * bc.count * 2))
			for i := 0; b.Loop(); i++ {
				d = append(d, s3Round(b, dl, i, bc.count, data))
				v = append(v, s3Round(b, vg, i, bc.count, data))
			}
			pick := func(rs []s3RoundResult, f func(s3RoundResult) float64) float64 {
				xs := make([]float64, len(rs))
				for i, r := range rs {
					xs[i] = f(r)
				}
				return median(xs)
			}
			type metric struct {
				unit string
				f    func(s3RoundResult) float64
			}
			ms := []metric{{"put-ops/s", func(r s3RoundResult) float64 { return r.putOps }}, {"get-ops/s", func(r s3RoundResult) float64 { return r.getOps }}}
			if bc.size >= 1<<20 {
				ms = []metric{{"put-MB/s", func(r s3RoundResult) float64 { return r.putMBs }}, {"get-MB/s", func(r s3RoundResult) float64 { return r.getMBs }}}
			}
			for _, m := range ms {
				dm, vm := pick(d, m.f), pick(v, m.f)
				b.ReportMetric(dm, "datenlord-"+m.unit)
				b.ReportMetric(vm, "versitygw-"+m.unit)
				b.ReportMetric(dm/vm, m.unit[:3]+"-ratio")
			}
		})
	}
}
