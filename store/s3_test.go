package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/datenlord/datenlord-go/store/s3test"
)

// openS3Test opens an S3 store on srv (or on endpoint, when not empty:
// a proxy in front of it) under prefix with extra URL parameters.
func openS3Test(t *testing.T, srv *s3test.Server, endpoint, prefix string, opts Options, params ...string) *S3Store {
	t.Helper()
	raw := srv.URL(prefix, params...)
	if endpoint != "" {
		raw = srv.URL(prefix, append([]string{"endpoint=" + endpoint}, params...)...)
	}
	if opts.S3.AccessKeyID == "" {
		opts.S3.AccessKeyID, opts.S3.SecretAccessKey = srv.AccessKey, srv.SecretKey
	}
	s, err := Open(context.Background(), raw, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", raw, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s.(*S3Store)
}

func TestS3BadURLs(t *testing.T) {
	tests := []struct {
		name, url, wantErr string
	}{
		{"no bucket", "s3:///prefix", "missing bucket name"},
		{"no bucket at all", "s3://", "missing bucket name"},
		{"opaque", "s3:bucket/prefix", "want s3://BUCKET/PREFIX"},
		{"port in bucket", "s3://bucket:9000/p", "bad bucket name"},
		{"short bucket", "s3://ab/p", "bad bucket name"},
		{"credentials", "s3://key:secret@bucket/p", "credentials in the URL"},
		{"dotdot prefix", "s3://bucket/a/../b", "bad prefix"},
		{"empty segment", "s3://bucket/a//b", "bad prefix"},
		{"fragment", "s3://bucket/p#x", "fragment"},
		{"unknown param", "s3://bucket/p?endpiont=http://x", `unknown query parameter "endpiont" (accepted: concurrency, endpoint, part-size, region, retries, timeout)`},
		{"repeated param", "s3://bucket/p?region=a&region=b", "given 2 times"},
		{"endpoint scheme", "s3://bucket/p?endpoint=ftp://127.0.0.1:21", "bad endpoint URL"},
		{"endpoint no scheme", "s3://bucket/p?endpoint=127.0.0.1:7070", "bad endpoint URL"},
		{"endpoint no host", "s3://bucket/p?endpoint=http://", "missing host"},
		{"endpoint bad port", "s3://bucket/p?endpoint=http://127.0.0.1:99999", "bad port"},
		{"endpoint query", "s3://bucket/p?endpoint=" + url.QueryEscape("http://h:1/?x=1"), "bad endpoint URL"},
		{"empty region", "s3://bucket/p?region=", "bad region"},
		{"concurrency zero", "s3://bucket/p?concurrency=0", "bad concurrency"},
		{"concurrency text", "s3://bucket/p?concurrency=many", "bad concurrency"},
		{"part-size small", "s3://bucket/p?part-size=1MiB", "bad part-size"},
		{"part-size huge", "s3://bucket/p?part-size=6GiB", "bad part-size"},
		{"part-size unit", "s3://bucket/p?part-size=8XB", "unknown unit"},
		{"timeout zero", "s3://bucket/p?timeout=0s", "bad timeout"},
		{"timeout bare", "s3://bucket/p?timeout=30", "bad timeout"},
		{"retries zero", "s3://bucket/p?retries=0", "bad retries"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Open(context.Background(), tt.url, Options{})
			if err == nil {
				s.Close()
				t.Fatalf("Open(%q) succeeded, want error containing %q", tt.url, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Open(%q) = %v\nwant error containing %q", tt.url, err, tt.wantErr)
			}
		})
	}
	if _, err := Open(context.Background(), "s3://bucket/p", Options{S3: S3Options{AccessKeyID: "k"}}); err == nil ||
		!strings.Contains(err.Error(), "both AccessKeyID and SecretAccessKey") {
		t.Fatalf("Open with half the credentials = %v", err)
	}
}

func TestS3GoodURLs(t *testing.T) {
	tests := []struct {
		url     string
		want    s3Config
		wantStr string
	}{
		{"s3://bucket", s3Config{bucket: "bucket", concurrency: 32, partSize: 16 << 20, timeout: 30 * time.Second, attempts: 5}, "s3://bucket/"},
		{"s3://bucket/a/b/?endpoint=http://127.0.0.1:7070/&region=eu-west-1&concurrency=4&part-size=8MiB&timeout=2s&retries=3",
			s3Config{bucket: "bucket", prefix: "a/b", endpoint: "http://127.0.0.1:7070", region: "eu-west-1", concurrency: 4, partSize: 8 << 20, timeout: 2 * time.Second, attempts: 3},
			"s3://bucket/a/b?endpoint=http%3A%2F%2F127.0.0.1%3A7070&region=eu-west-1"},
		{"s3://bucket/p?part-size=5242880", s3Config{bucket: "bucket", prefix: "p", concurrency: 32, partSize: 5 << 20, timeout: 30 * time.Second, attempts: 5}, "s3://bucket/p"},
	}
	for _, tt := range tests {
		u, err := url.Parse(tt.url)
		if err != nil {
			t.Fatal(err)
		}
		got, err := parseS3URL(u, 0)
		if err != nil {
			t.Fatalf("parseS3URL(%q): %v", tt.url, err)
		}
		if got != tt.want {
			t.Errorf("parseS3URL(%q) = %+v, want %+v", tt.url, got, tt.want)
		}
		if got.String() != tt.wantStr {
			t.Errorf("String() = %q, want %q", got.String(), tt.wantStr)
		}
	}
	// Open does no I/O: an unreachable endpoint opens, and Check says why
	// it cannot work.
	s, err := Open(context.Background(), "s3://bucket/p?endpoint=http://127.0.0.1:1&timeout=1s&retries=1", Options{S3: S3Options{AccessKeyID: "k", SecretAccessKey: "s"}})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	if err := s.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "cannot reach endpoint http://127.0.0.1:1") {
		t.Fatalf("Check of an unreachable endpoint = %v", err)
	}
}

func TestS3KeysAndForeignObjects(t *testing.T) {
	ctx := context.Background()
	srv := s3test.Start(t)
	s := openS3Test(t, srv, "", "node/a", Options{})
	if err := s.Put(ctx, 0x1234_5678_9abc_def0, []byte("block")); err != nil {
		t.Fatal(err)
	}
	raw := srv.Client()
	head, err := raw.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(srv.Bucket), Key: aws.String("node/a/blocks/123456789abcdef0")})
	if err != nil || aws.ToInt64(head.ContentLength) != 5 {
		t.Fatalf("block not at the documented key: %v", err)
	}
	for _, k := range []string{
		"node/a/blocks/notablock", "node/a/blocks/0123", "node/a/blocks/123456789ABCDEF0",
		"node/a/blocks/00000000000000ff/x", "node/a/blocks/.probe.0000000000000001",
		"node/a/0000000000000002", "node/ab/blocks/0000000000000003", "node/a/blocks/00000000000000040",
	} {
		if _, err := raw.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(srv.Bucket), Key: aws.String(k), Body: strings.NewReader("x")}); err != nil {
			t.Fatalf("put foreign object %s: %v", k, err)
		}
	}
	var ids []uint64
	if err := s.List(ctx, func(id uint64) error { ids = append(ids, id); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(ids) != 1 || ids[0] != 0x1234_5678_9abc_def0 {
		t.Fatalf("List = %x, want only the block (foreign keys ignored)", ids)
	}
	// Many pages of mixed keys.
	for id := uint64(1); id <= 6; id++ {
		if err := s.Put(ctx, id, []byte{byte(id)}); err != nil {
			t.Fatal(err)
		}
	}
	s.listPageSize = 2
	ids = ids[:0]
	if err := s.List(ctx, func(id uint64) error { ids = append(ids, id); return nil }); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprintf("%x", ids) != "[1 2 3 4 5 6 123456789abcdef0]" {
		t.Fatalf("paged List = %x", ids)
	}
	s.listPageSize = 0
	// No prefix: blocks/ at the bucket's root.
	root := openS3Test(t, srv, "", "", Options{})
	if err := root.Put(ctx, 1, []byte("r")); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(srv.Bucket), Key: aws.String("blocks/0000000000000001")}); err != nil {
		t.Fatalf("block of a prefix-less store not at blocks/<id>: %v", err)
	}
}

func TestS3CredentialsFromEnvironment(t *testing.T) {
	ctx := context.Background()
	srv := s3test.Start(t)
	srv.Setenv(t)
	s, err := Open(ctx, "s3://"+srv.Bucket+"/env?endpoint="+url.QueryEscape(srv.Endpoint), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Check(ctx); err != nil {
		t.Fatalf("Check with credentials from the environment: %v", err)
	}
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	s2, err := Open(ctx, "s3://"+srv.Bucket+"/env?endpoint="+url.QueryEscape(srv.Endpoint), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if err := s2.Check(ctx); err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Fatalf("Check with a wrong secret = %v, want access denied", err)
	}
}

func TestS3CheckErrors(t *testing.T) {
	ctx := context.Background()
	srv := s3test.Start(t)
	missing, err := Open(ctx, strings.Replace(srv.URL("p"), srv.Bucket, "no-such-bucket", 1),
		Options{S3: S3Options{AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey}})
	if err != nil {
		t.Fatal(err)
	}
	defer missing.Close()
	if err := missing.Check(ctx); err == nil || !strings.Contains(err.Error(), `bucket "no-such-bucket" does not exist`) {
		t.Fatalf("Check of a missing bucket = %v", err)
	}
	denied := openS3Test(t, srv, "", "p", Options{S3: S3Options{AccessKeyID: srv.AccessKey, SecretAccessKey: "wrong"}})
	if err := denied.Check(ctx); err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Fatalf("Check with a wrong secret = %v", err)
	}
}

func TestS3Outage(t *testing.T) {
	ctx := context.Background()
	srv := s3test.Start(t)
	s := openS3Test(t, srv, "", "outage", Options{}, "timeout=2s", "retries=3")
	if err := s.Put(ctx, 1, []byte("before")); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	start := time.Now()
	err := s.Put(ctx, 2, []byte("during"))
	took := time.Since(start)
	if err == nil {
		t.Fatal("Put with the server down succeeded")
	}
	if took > 15*time.Second {
		t.Fatalf("Put with the server down took %s, want a bounded failure", took)
	}
	for _, want := range []string{"store put block 0x0000000000000002", "PutObject s3://datenlord-test/outage/blocks/0000000000000002", "gave up after 3 attempts", "connect"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("outage error lacks %q: %v", want, err)
		}
	}
	t.Logf("Put during the outage failed after %s: %v", took.Round(time.Millisecond), err)
	if _, err := s.ReadAt(ctx, 1, 0, make([]byte, 6)); err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("ReadAt during the outage = %v, want an error that is not ErrNotFound", err)
	}
	if err := s.Check(ctx); err == nil || !strings.Contains(err.Error(), "cannot reach endpoint") {
		t.Fatalf("Check during the outage = %v", err)
	}

	srv.Restart()
	if err := s.Put(ctx, 2, []byte("after")); err != nil {
		t.Fatalf("Put after restart: %v", err)
	}
	buf := make([]byte, 16)
	if n, err := s.ReadAt(ctx, 1, 0, buf); err != nil || string(buf[:n]) != "before" {
		t.Fatalf("ReadAt after restart = %q, %v", buf[:n], err)
	}
	if n, err := s.ReadAt(ctx, 2, 0, buf); err != nil || string(buf[:n]) != "after" {
		t.Fatalf("ReadAt after restart = %q, %v", buf[:n], err)
	}
}

// TestS3HungServer: a server that accepts connections and never answers
// must fail each attempt at its timeout, not hang.
func TestS3HungServer(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c) // hold it open, say nothing
			mu.Unlock()
		}
	}()
	s, err := Open(context.Background(), "s3://bucket/p?endpoint=http://"+l.Addr().String()+"&timeout=300ms&retries=2",
		Options{S3: S3Options{AccessKeyID: "k", SecretAccessKey: "s"}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	start := time.Now()
	_, err = s.ReadAt(context.Background(), 1, 0, make([]byte, 10))
	took := time.Since(start)
	// Either the attempt's own 300ms deadline or the HTTP client's response
	// header timeout (set to the same value) fires first: both are timeouts.
	if err == nil || !strings.Contains(err.Error(), "gave up after 2 attempts") ||
		!(strings.Contains(err.Error(), "timed out after 300ms") || strings.Contains(err.Error(), "timeout awaiting response headers")) {
		t.Fatalf("ReadAt from a hung server = %v", err)
	}
	if took > 5*time.Second {
		t.Fatalf("ReadAt from a hung server took %s", took)
	}
	// The caller's own deadline wins over the attempts.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := s.Put(ctx, 1, []byte("x")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Put with a short deadline = %v, want DeadlineExceeded", err)
	}
}

// faultProxy is a reverse proxy to the S3 server that answers some
// requests itself with an error.
type faultProxy struct {
	*httptest.Server
	seen  atomic.Int64
	fault func(n int64, r *http.Request) bool // n counts requests from 1
	code  string
	http  int
}

func newFaultProxy(t *testing.T, target string, status int, code string, fault func(n int64, r *http.Request) bool) *faultProxy {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	p := &faultProxy{fault: fault, code: code, http: status}
	rp := httputil.NewSingleHostReverseProxy(u)
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p.fault(p.seen.Add(1), r) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/xml")
			w.WriteHeader(p.http)
			_, _ = io.WriteString(w, `<?xml version="1.0" encoding="UTF-8"?>`+
				`<Error><Code>`+p.code+`</Code><Message>Please reduce your request rate.</Message><RequestId>test</RequestId></Error>`)
			return
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(p.Close)
	return p
}

func TestS3RetriesSlowDown(t *testing.T) {
	ctx := context.Background()
	srv := s3test.Start(t)
	reg := prometheus.NewRegistry()
	const failures = 3
	proxy := newFaultProxy(t, srv.Endpoint, http.StatusServiceUnavailable, "SlowDown", func(n int64, _ *http.Request) bool { return n <= failures })
	s := openS3Test(t, srv, proxy.URL, "retry", Options{Registerer: reg})
	if err := s.Put(ctx, 1, []byte("persistent")); err != nil {
		t.Fatalf("Put through %d SlowDowns: %v", failures, err)
	}
	if got := counterValue(t, reg, "datenlord_store_retries_total", map[string]string{"op": "put"}); got != failures {
		t.Fatalf("retries_total{op=put} = %v, want %d", got, failures)
	}
	if got := counterValue(t, reg, "datenlord_store_requests_total", map[string]string{"op": "put", "outcome": "ok"}); got != 1 {
		t.Fatalf("requests_total{op=put,outcome=ok} = %v, want 1", got)
	}
	buf := make([]byte, 10)
	if n, err := s.ReadAt(ctx, 1, 0, buf); err != nil || string(buf[:n]) != "persistent" {
		t.Fatalf("ReadAt = %q, %v", buf[:n], err)
	}

	// Permanent throttling: a bounded, clear failure.
	always := newFaultProxy(t, srv.Endpoint, http.StatusServiceUnavailable, "SlowDown", func(int64, *http.Request) bool { return true })
	s2 := openS3Test(t, srv, always.URL, "retry", Options{Registerer: reg}, "retries=4")
	start := time.Now()
	_, err := s2.ReadAt(ctx, 1, 0, buf)
	took := time.Since(start)
	if err == nil || errors.Is(err, ErrNotFound) {
		t.Fatalf("ReadAt under permanent SlowDown = %v", err)
	}
	for _, want := range []string{"GetObject s3://datenlord-test/retry/blocks/0000000000000001", "gave up after 4 attempts", "SlowDown", "503"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if took > 10*time.Second {
		t.Fatalf("giving up took %s", took)
	}
	if got := always.seen.Load(); got != 4 {
		t.Fatalf("server saw %d attempts, want 4", got)
	}
	if got := counterValue(t, reg, "datenlord_store_retries_total", map[string]string{"op": "get"}); got != 3 {
		t.Fatalf("retries_total{op=get} = %v, want 3", got)
	}
	t.Logf("permanent SlowDown: gave up after %s: %v", took.Round(time.Millisecond), err)

	// A client error is final: no retries.
	denied := newFaultProxy(t, srv.Endpoint, http.StatusForbidden, "AccessDenied", func(int64, *http.Request) bool { return true })
	s3 := openS3Test(t, srv, denied.URL, "retry", Options{})
	if err := s3.Put(ctx, 2, []byte("x")); err == nil || strings.Contains(err.Error(), "gave up") {
		t.Fatalf("Put on AccessDenied = %v, want a final error", err)
	}
	if got := denied.seen.Load(); got != 1 {
		t.Fatalf("AccessDenied was tried %d times, want 1", got)
	}
}

func TestS3Multipart(t *testing.T) {
	ctx := context.Background()
	srv := s3test.Start(t)
	const partSize = MinS3PartSize // lowered from the 16 MiB default
	s := openS3Test(t, srv, "", "mp", Options{}, "part-size=5MiB", "concurrency=2")
	data := storetestPattern(2*partSize + partSize/2)
	if err := s.Put(ctx, 1, data); err != nil {
		t.Fatalf("multipart Put: %v", err)
	}
	raw := srv.Client()
	head, err := raw.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(srv.Bucket), Key: aws.String(s.key(1))})
	if err != nil {
		t.Fatal(err)
	}
	if etag := aws.ToString(head.ETag); !strings.HasSuffix(strings.Trim(etag, `"`), "-3") {
		t.Fatalf("ETag %s: want a 3-part multipart upload", etag)
	}
	got := make([]byte, len(data)+10)
	if n, err := s.ReadAt(ctx, 1, 0, got); err != nil || n != len(data) || !bytes.Equal(got[:n], data) {
		t.Fatalf("ReadAt of the multipart block: n=%d err=%v", n, err)
	}
	// Exactly the part size: a single PutObject.
	if err := s.Put(ctx, 2, data[:partSize]); err != nil {
		t.Fatal(err)
	}
	if head, err := raw.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(srv.Bucket), Key: aws.String(s.key(2))}); err != nil ||
		strings.Contains(aws.ToString(head.ETag), "-") {
		t.Fatalf("block of exactly part-size: %v, ETag %s; want a plain PutObject", err, aws.ToString(head.ETag))
	}

	noUploads := func() {
		t.Helper()
		ups, err := raw.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: aws.String(srv.Bucket)})
		if err != nil {
			t.Fatal(err)
		}
		if len(ups.Uploads) != 0 {
			t.Fatalf("%d multipart uploads left after a failed Put, want 0 (aborted)", len(ups.Uploads))
		}
	}
	// A part that keeps failing: Put fails and the upload is aborted.
	broken := newFaultProxy(t, srv.Endpoint, http.StatusInternalServerError, "InternalError", func(_ int64, r *http.Request) bool {
		return r.URL.Query().Get("partNumber") == "3"
	})
	sb := openS3Test(t, srv, broken.URL, "mp", Options{}, "part-size=5MiB", "retries=2")
	err = sb.Put(ctx, 3, data)
	if err == nil || !strings.Contains(err.Error(), "UploadPart 3/3") || !strings.Contains(err.Error(), "gave up after 2 attempts") {
		t.Fatalf("Put with a failing part = %v", err)
	}
	noUploads()
	if _, err := s.ReadAt(ctx, 3, 0, make([]byte, 1)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ReadAt of a failed multipart block = %v, want ErrNotFound", err)
	}

	// Parts below S3's minimum (allowed by MinPartSize, refused by this
	// server at completion): a clear error, and the upload aborted.
	small := openS3Test(t, srv, "", "mp", Options{S3: S3Options{MinPartSize: 1 << 20}}, "part-size=1MiB")
	if err := small.Put(ctx, 4, data[:3<<20]); err == nil || !strings.Contains(err.Error(), "EntityTooSmall") {
		t.Fatalf("Put with 1MiB parts = %v, want the server's EntityTooSmall", err)
	}
	noUploads()
}

func storetestPattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) + byte(i>>16)
	}
	return b
}

func TestS3Metrics(t *testing.T) {
	ctx := context.Background()
	srv := s3test.Start(t)
	reg := prometheus.NewRegistry()
	s := openS3Test(t, srv, "", "metrics", Options{Registerer: reg})
	openS3Test(t, srv, "", "metrics2", Options{Registerer: reg}) // shares the collectors
	_ = s.Put(ctx, 1, []byte("x"))
	_, _ = s.ReadAt(ctx, 1, 0, make([]byte, 1))
	_, _ = s.ReadAt(ctx, 2, 0, make([]byte, 1))
	_ = s.Delete(ctx, 1)
	_ = s.List(ctx, func(uint64) error { return nil })
	_ = s.Check(ctx)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_ = s.Put(cctx, 3, []byte("x"))
	for _, tt := range []struct {
		op, outcome string
		want        float64
	}{
		{"put", "ok", 1}, {"put", "error", 1}, {"get", "ok", 1}, {"get", "not_found", 1},
		{"delete", "ok", 1}, {"list", "ok", 1}, {"check", "ok", 1},
	} {
		if got := counterValue(t, reg, "datenlord_store_requests_total", map[string]string{"op": tt.op, "outcome": tt.outcome}); got != tt.want {
			t.Errorf("requests_total{op=%s,outcome=%s} = %v, want %v", tt.op, tt.outcome, got, tt.want)
		}
	}
	if got := counterValue(t, reg, "datenlord_store_request_duration_seconds", map[string]string{"op": "get"}); got != 2 {
		t.Errorf("duration{op=get} count = %v, want 2", got)
	}
}

// TestReadRangeMalformed feeds readRange responses a broken server or
// proxy could send: errors, never a panic or wrong bytes.
func TestReadRangeMalformed(t *testing.T) {
	body := func(s string) io.ReadCloser { return io.NopCloser(strings.NewReader(s)) }
	tests := []struct {
		name    string
		out     s3.GetObjectOutput
		off     int64
		len     int
		wantN   int
		wantErr string
	}{
		{"ok", s3.GetObjectOutput{ContentRange: aws.String("bytes 2-5/10"), Body: body("cdef")}, 2, 4, 4, ""},
		{"short object", s3.GetObjectOutput{ContentRange: aws.String("bytes 8-9/10"), Body: body("ij")}, 8, 4, 2, ""},
		{"total unknown", s3.GetObjectOutput{ContentRange: aws.String("bytes 0-1/*"), Body: body("ab")}, 0, 2, 2, ""},
		{"truncated", s3.GetObjectOutput{ContentRange: aws.String("bytes 2-5/10"), Body: body("cd")}, 2, 4, 0, "truncated"},
		{"more than asked", s3.GetObjectOutput{ContentRange: aws.String("bytes 2-99/100"), Body: body("cdefgh")}, 2, 4, 4, ""},
		{"wrong start", s3.GetObjectOutput{ContentRange: aws.String("bytes 0-3/10"), Body: body("abcd")}, 2, 4, 0, "server sent range"},
		{"garbage range", s3.GetObjectOutput{ContentRange: aws.String("bytes x-y/z"), Body: body("abcd")}, 2, 4, 0, "malformed Content-Range"},
		{"reversed range", s3.GetObjectOutput{ContentRange: aws.String("bytes 5-2/10"), Body: body("abcd")}, 2, 4, 0, "malformed Content-Range"},
		{"negative", s3.GetObjectOutput{ContentRange: aws.String("bytes -2-5/10"), Body: body("abcd")}, 2, 4, 0, "malformed Content-Range"},
		{"empty", s3.GetObjectOutput{ContentRange: aws.String(""), Body: body("abcd")}, 2, 4, 0, "malformed Content-Range"},
		{"range ignored", s3.GetObjectOutput{ContentLength: aws.Int64(10), Body: body("abcdefghij")}, 2, 4, 0, "ignored the Range"},
		{"whole object from 0", s3.GetObjectOutput{ContentLength: aws.Int64(10), Body: body("abcdefghij")}, 0, 4, 4, ""},
		{"whole short object", s3.GetObjectOutput{ContentLength: aws.Int64(2), Body: body("ab")}, 0, 4, 2, ""},
		{"no length", s3.GetObjectOutput{Body: body("ab")}, 0, 4, 2, ""},
		{"negative length", s3.GetObjectOutput{ContentLength: aws.Int64(-1), Body: body("ab")}, 0, 4, 2, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := make([]byte, tt.len)
			n, err := readRange(&tt.out, tt.off, dst)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("readRange = %d, %v; want error %q", n, err, tt.wantErr)
			}
			if n != tt.wantN {
				t.Fatalf("readRange n = %d, want %d", n, tt.wantN)
			}
		})
	}
	if !retryable(errTruncated) {
		t.Fatal("a truncated body is not retried")
	}
}

func TestBackoffBounded(t *testing.T) {
	for n := 1; n < 200; n++ {
		d := backoff(n)
		if d <= 0 || d > s3MaxBackoff+time.Millisecond {
			t.Fatalf("backoff(%d) = %s", n, d)
		}
		if n <= 3 && d > s3BaseBackoff<<(n-1)+time.Millisecond {
			t.Fatalf("backoff(%d) = %s, above its ceiling", n, d)
		}
	}
}

// TestS3TruncatedBodyRetried: a GET whose body ends before its
// Content-Length (a dropped connection) is retried, never returned short.
func TestS3TruncatedBodyRetried(t *testing.T) {
	ctx := context.Background()
	srv := s3test.Start(t)
	reg := prometheus.NewRegistry()
	s := openS3Test(t, srv, "", "trunc", Options{Registerer: reg})
	if err := s.Put(ctx, 1, []byte("0123456789")); err != nil {
		t.Fatal(err)
	}
	target, _ := url.Parse(srv.Endpoint)
	rp := httputil.NewSingleHostReverseProxy(target)
	var cut atomic.Bool
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && cut.CompareAndSwap(false, true) {
			conn, buf, err := w.(http.Hijacker).Hijack()
			if err != nil {
				t.Errorf("hijack: %v", err)
				return
			}
			_, _ = buf.WriteString("HTTP/1.1 206 Partial Content\r\nContent-Length: 10\r\nContent-Range: bytes 0-9/10\r\n\r\n012")
			_ = buf.Flush()
			conn.Close()
			return
		}
		rp.ServeHTTP(w, r)
	}))
	defer proxy.Close()
	sp := openS3Test(t, srv, proxy.URL, "trunc", Options{Registerer: reg})
	buf := make([]byte, 10)
	if n, err := sp.ReadAt(ctx, 1, 0, buf); err != nil || string(buf[:n]) != "0123456789" {
		t.Fatalf("ReadAt through a truncating proxy = %q, %v", buf[:n], err)
	}
	if !cut.Load() {
		t.Fatal("the proxy never truncated a response")
	}
	if got := counterValue(t, reg, "datenlord_store_retries_total", map[string]string{"op": "get"}); got != 1 {
		t.Fatalf("retries_total{op=get} = %v, want 1", got)
	}
}

// TestS3ConcurrencyBound: no more requests in flight than concurrency=,
// and waiting for a slot respects the caller's context.
func TestS3ConcurrencyBound(t *testing.T) {
	ctx := context.Background()
	srv := s3test.Start(t)
	target, _ := url.Parse(srv.Endpoint)
	rp := httputil.NewSingleHostReverseProxy(target)
	var inFlight, peak atomic.Int64
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		time.Sleep(5 * time.Millisecond)
		rp.ServeHTTP(w, r)
	}))
	defer proxy.Close()
	s := openS3Test(t, srv, proxy.URL, "conc", Options{}, "concurrency=2")
	var wg sync.WaitGroup
	for id := range uint64(8) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Put(ctx, id, []byte("x")); err != nil {
				t.Errorf("Put: %v", err)
			}
		}()
	}
	wg.Wait()
	if got := peak.Load(); got < 1 || got > 2 {
		t.Fatalf("peak requests in flight = %d, want 1..2", got)
	}

	// All slots taken: a Put waits, and gives up with its context.
	s.sem <- struct{}{}
	s.sem <- struct{}{}
	defer func() { s.release(); s.release() }()
	dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := s.Put(dctx, 100, []byte("x")); !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "waiting for a request slot") {
		t.Fatalf("Put with no free slot = %v", err)
	}
}
