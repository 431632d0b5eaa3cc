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
	"github.com/prometheus/client_golang/prometheus"

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
	// storeGets returns the block store reads so far (nil: not a
	// datenlord target).
	storeGets func() float64
}

func s3Client(endpoint, region, ak, sk string) *s3.Client {
	return s3.New(s3.Options{BaseEndpoint: aws.String(endpoint), Region: region, UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(ak, sk, "")})
}

// startGatewayTarget mounts a datenlord file system (file:// store in the
// test's temp dir) with a memory tier of cacheBytes and serves it through
// the S3 gateway.
func startGatewayTarget(b *testing.B, cacheBytes int64) s3Target {
	b.Helper()
	reg := prometheus.NewRegistry()
	h := fstest.Start(b, fstest.WithCacheBytes(cacheBytes), fstest.WithRegisterer(reg))
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
	return s3Target{name: "datenlord", client: c, bucket: "bench", storeGets: func() float64 {
		return labeledCounter(b, reg, "datenlord_store_requests_total", "op", "get")
	}}
}

// labeledCounter returns the sum of the series of counter name in reg
// whose label has value.
func labeledCounter(b *testing.B, reg *prometheus.Registry, name, label, value string) float64 {
	mfs, err := reg.Gather()
	if err != nil {
		b.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					sum += m.GetCounter().GetValue()
				}
			}
		}
	}
	return sum
}

// s3RoundResult is one round's throughput of a target.
type s3RoundResult struct {
	putOps, getOps, putMBs, getMBs float64
	// storeReads is the block store reads per GET (datenlord only): 0
	// when every GET is served from the cache.
	storeReads float64
}

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
	var gets0 float64
	if t.storeGets != nil {
		gets0 = t.storeGets()
	}
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
	r := s3RoundResult{
		putOps: float64(count) / put.Seconds(), getOps: float64(count) / get.Seconds(),
		putMBs: total / 1e6 / put.Seconds(), getMBs: total / 1e6 / get.Seconds(),
	}
	if t.storeGets != nil {
		r.storeReads = (t.storeGets() - gets0) / float64(count)
	}
	return r
}

// BenchmarkS3Gateway compares the datenlord S3 gateway with versitygw
// (POSIX backend) on the same machine and disk, in the same run: every
// iteration PUTs then GETs a set of objects on each server, one request at
// a time from one client. Reported are the medians over iterations of
// ops/s (4KiB) or MB/s (16MiB) for each server, datenlord/versitygw ratios
// and store-reads/GET, datenlord's block store reads per GET (0: served
// from its cache). Run with e.g. -bench S3Gateway -benchtime 3x.
//
// The datenlord node has the node's default memory tier (512 MiB), which
// holds the working set: the GETs are warm, as versitygw's are (its files
// are in the OS page cache). 16MiB-cold gives it a 64 MiB memory tier for
// a 96 MiB working set read in order, so (LRU) no GET finds its object in
// memory: every block is read from the store (a file in the OS page cache)
// by readahead.
func BenchmarkS3Gateway(b *testing.B) {
	for _, bc := range []struct {
		name       string
		size       int
		count      int
		cacheBytes int64
	}{
		{"4KiB", 4 << 10, 200, 512 << 20},
		{"16MiB", 16 << 20, 6, 512 << 20},
		{"16MiB-cold", 16 << 20, 6, 64 << 20},
	} {
		b.Run(bc.name, func(b *testing.B) {
			data := make([]byte, bc.size)
			if _, err := rand.Read(data); err != nil {
				b.Fatal(err)
			}
			dl := startGatewayTarget(b, bc.cacheBytes)
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
			b.ReportMetric(pick(d, func(r s3RoundResult) float64 { return r.storeReads }), "store-reads/GET")
		})
	}
}
