package s3gw_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/md5"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/aws/smithy-go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/datenlord/datenlord-go/fs/fstest"
	"github.com/datenlord/datenlord-go/internal/clientauth"
	"github.com/datenlord/datenlord-go/s3gw"
)

const (
	testAK = "AKIDTEST"
	testSK = "secret/with+chars"
)

// env is a gateway on a real mounted file system.
type env struct {
	h      *fstest.Harness
	g      *s3gw.Gateway
	srv    *s3gw.Server
	url    string
	reg    *prometheus.Registry
	client *s3.Client
}

func selfSigned(t *testing.T) *tls.Config {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: nil, DNSNames: []string{"localhost"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
}

func startEnv(t *testing.T, tc *tls.Config, opts ...fstest.Option) *env {
	t.Helper()
	h := fstest.Start(t, opts...)
	e := &env{h: h, reg: prometheus.NewRegistry()}
	var err error
	e.g, err = s3gw.New(t.Context(), s3gw.Config{Files: h.FS.Files(), Secrets: clientauth.New(testAK, testSK).Secret,
		Registerer: e.reg, Logger: h.Opts.Logger})
	if err != nil {
		t.Fatal(err)
	}
	e.srv, err = s3gw.Serve("127.0.0.1:0", tc, e.g)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := e.srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
	})
	scheme := "http"
	if tc != nil {
		scheme = "https"
	}
	e.url = scheme + "://" + e.srv.Addr()
	e.client = e.newClient(testSK, tc != nil)
	return e
}

func (e *env) newClient(secret string, insecureTLS bool) *s3.Client {
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: insecureTLS}}}
	return s3.New(s3.Options{
		BaseEndpoint:     aws.String(e.url),
		Region:           "us-east-1",
		UsePathStyle:     true,
		Credentials:      credentials.NewStaticCredentialsProvider(testAK, secret, ""),
		HTTPClient:       hc,
		RetryMaxAttempts: 1,
	})
}

// code returns the S3 error code of err ("" for nil).
func code(err error) string {
	if err == nil {
		return ""
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return "not an API error: " + err.Error()
}

func randBytes(t testing.TB, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func md5hex(b []byte) string { s := md5.Sum(b); return hex.EncodeToString(s[:]) }

func (e *env) put(t *testing.T, bucket, key string, data []byte) {
	t.Helper()
	if _, err := e.client.PutObject(t.Context(), &s3.PutObjectInput{Bucket: &bucket, Key: &key, Body: bytes.NewReader(data)}); err != nil {
		t.Fatalf("put %s/%s: %v", bucket, key, err)
	}
}

func (e *env) get(t *testing.T, bucket, key string) []byte {
	t.Helper()
	out, err := e.client.GetObject(t.Context(), &s3.GetObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		t.Fatalf("get %s/%s: %v", bucket, key, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestGateway runs the S3 API through aws-sdk-go-v2 against one mounted
// file system; the subtests share it.
func TestGateway(t *testing.T) {
	e := startEnv(t, nil)
	ctx := t.Context()
	c := e.client
	bucket := "bkt"
	if _, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &bucket}); err != nil {
		t.Fatal(err)
	}

	t.Run("Buckets", func(t *testing.T) {
		for _, tc := range []struct {
			name, bucket, want string
		}{
			{"again", bucket, "BucketAlreadyOwnedByYou"},
			{"uppercase", "Bad", "InvalidBucketName"},
			{"short", "ab", "InvalidBucketName"},
			{"ip", "192.168.1.1", "InvalidBucketName"},
			{"new", "other-bucket", ""},
		} {
			_, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(tc.bucket)})
			if got := code(err); got != tc.want {
				t.Errorf("%s: CreateBucket(%q) = %q, want %q", tc.name, tc.bucket, got, tc.want)
			}
		}
		out, err := c.ListBuckets(ctx, &s3.ListBucketsInput{})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, b := range out.Buckets {
			names = append(names, *b.Name)
		}
		if !slices.Equal(names, []string{"bkt", "other-bucket"}) {
			t.Errorf("ListBuckets = %v, want [bkt other-bucket] (no hidden directory)", names)
		}
		if _, err := c.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String("nope-bucket")}); err == nil {
			t.Error("HeadBucket of a missing bucket succeeded")
		}
		e.put(t, "other-bucket", "x", []byte("x"))
		if _, err := c.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String("other-bucket")}); code(err) != "BucketNotEmpty" {
			t.Errorf("DeleteBucket of a non-empty bucket: %v, want BucketNotEmpty", err)
		}
		if _, err := c.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String("other-bucket"), Key: aws.String("x")}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.DeleteBucket(ctx, &s3.DeleteBucketInput{Bucket: aws.String("other-bucket")}); err != nil {
			t.Errorf("DeleteBucket: %v", err)
		}
		if _, err := c.ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String("other-bucket")}); code(err) != "NoSuchBucket" {
			t.Errorf("list a deleted bucket: %v, want NoSuchBucket", err)
		}
	})

	t.Run("PutGet", func(t *testing.T) {
		for _, n := range []int{0, 1, 4096, 512<<10 + 7, 3<<20 + 1} {
			key := fmt.Sprintf("sizes/obj-%d", n)
			data := randBytes(t, n)
			out, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: &bucket, Key: &key, Body: bytes.NewReader(data),
				ContentType: aws.String("text/x-test"), Metadata: map[string]string{"color": "blue"}})
			if err != nil {
				t.Fatalf("put %d bytes: %v", n, err)
			}
			if got, want := strings.Trim(aws.ToString(out.ETag), `"`), md5hex(data); got != want {
				t.Errorf("put %d bytes: ETag %s, want MD5 %s", n, got, want)
			}
			g, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: &key})
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(g.Body)
			g.Body.Close()
			if !bytes.Equal(got, data) {
				t.Errorf("get %d bytes: data differs (got %d bytes)", n, len(got))
			}
			if aws.ToString(g.ContentType) != "text/x-test" || g.Metadata["color"] != "blue" {
				t.Errorf("get: content type %q, metadata %v", aws.ToString(g.ContentType), g.Metadata)
			}
			// The same bytes through the mount.
			fb, err := os.ReadFile(filepath.Join(e.h.Mountpoint, bucket, key))
			if err != nil || !bytes.Equal(fb, data) {
				t.Errorf("read %s through FUSE: %v, equal=%v", key, err, bytes.Equal(fb, data))
			}
		}
		// Overwrite: readers see the new object.
		e.put(t, bucket, "sizes/obj-1", []byte("new"))
		if got := e.get(t, bucket, "sizes/obj-1"); string(got) != "new" {
			t.Errorf("after overwrite got %q", got)
		}
		if got, _ := os.ReadFile(filepath.Join(e.h.Mountpoint, bucket, "sizes/obj-1")); string(got) != "new" {
			t.Errorf("after overwrite FUSE reads %q", got)
		}
		// A file written through FUSE is an object with a stable ETag.
		data := randBytes(t, 10000)
		if err := os.WriteFile(filepath.Join(e.h.Mountpoint, bucket, "fuse.txt"), data, 0o644); err != nil {
			t.Fatal(err)
		}
		h1, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &bucket, Key: aws.String("fuse.txt")})
		if err != nil {
			t.Fatal(err)
		}
		h2, _ := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &bucket, Key: aws.String("fuse.txt")})
		if aws.ToInt64(h1.ContentLength) != 10000 || aws.ToString(h1.ETag) != aws.ToString(h2.ETag) ||
			!strings.HasPrefix(aws.ToString(h1.ContentType), "text/plain") {
			t.Errorf("HEAD of a FUSE file: size %d, ETag %s/%s, type %q", aws.ToInt64(h1.ContentLength),
				aws.ToString(h1.ETag), aws.ToString(h2.ETag), aws.ToString(h1.ContentType))
		}
		if got := e.get(t, bucket, "fuse.txt"); !bytes.Equal(got, data) {
			t.Error("GET of a FUSE file differs")
		}
	})

	t.Run("Errors", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			do   func() error
			want string
		}{
			{"missing key", func() error {
				_, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: aws.String("nope")})
				return err
			}, "NoSuchKey"},
			{"missing bucket", func() error {
				_, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String("nope-bucket"), Key: aws.String("k")})
				return err
			}, "NoSuchBucket"},
			{"empty segment", func() error {
				_, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: &bucket, Key: aws.String("a//b"), Body: strings.NewReader("x")})
				return err
			}, "InvalidArgument"},
			{"dot segment", func() error {
				_, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: &bucket, Key: aws.String("a/./b"), Body: strings.NewReader("x")})
				return err
			}, "InvalidArgument"},
			{"long segment", func() error {
				_, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: &bucket, Key: aws.String(strings.Repeat("k", 256)), Body: strings.NewReader("x")})
				return err
			}, "KeyTooLongError"},
			{"bad md5", func() error {
				_, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: &bucket, Key: aws.String("md5"), Body: strings.NewReader("hello"),
					ContentMD5: aws.String("XrY7u+Ae7tCTyyK7j1rNww==")}) // MD5 of "hello world"
				return err
			}, "BadDigest"},
			{"wrong secret", func() error {
				_, err := e.newClient("wrong", false).GetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: aws.String("sizes/obj-1")})
				return err
			}, "SignatureDoesNotMatch"},
			{"parent is object", func() error {
				_, err := c.PutObject(ctx, &s3.PutObjectInput{Bucket: &bucket, Key: aws.String("sizes/obj-1/x"), Body: strings.NewReader("x")})
				return err
			}, "ObjectConflict"},
		} {
			if got := code(tc.do()); got != tc.want {
				t.Errorf("%s: error %q, want %q", tc.name, got, tc.want)
			}
		}
		// An unknown access key.
		bad := s3.New(s3.Options{BaseEndpoint: aws.String(e.url), Region: "us-east-1", UsePathStyle: true,
			Credentials: credentials.NewStaticCredentialsProvider("NOPE", testSK, "")})
		if _, err := bad.ListBuckets(ctx, &s3.ListBucketsInput{}); code(err) != "InvalidAccessKeyId" {
			t.Errorf("unknown access key: %v", err)
		}
		// Anonymous and raw wrong-signature requests get no data.
		resp, err := http.Get(e.url + "/bkt/sizes/obj-1")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 403 || !strings.Contains(string(body), "AccessDenied") {
			t.Errorf("anonymous GET: %d %s", resp.StatusCode, body)
		}
	})

	t.Run("RangeAndConditionals", func(t *testing.T) {
		data := randBytes(t, 1<<20+100)
		e.put(t, bucket, "range/obj", data)
		size := len(data)
		for _, tc := range []struct {
			rng       string
			from, to  int // expected [from, to)
			wantError string
		}{
			{"bytes=0-0", 0, 1, ""},
			{"bytes=10-19", 10, 20, ""},
			{"bytes=524280-524300", 524280, 524301, ""},
			{"bytes=1048570-", 1048570, size, ""},
			{"bytes=-50", size - 50, size, ""},
			{"bytes=0-99999999", 0, size, ""},
			{fmt.Sprintf("bytes=%d-", size), 0, 0, "InvalidRange"},
		} {
			out, err := c.GetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: aws.String("range/obj"), Range: aws.String(tc.rng)})
			if code(err) != tc.wantError {
				t.Errorf("range %s: error %v, want %q", tc.rng, err, tc.wantError)
				continue
			}
			if err != nil {
				continue
			}
			got, _ := io.ReadAll(out.Body)
			out.Body.Close()
			if !bytes.Equal(got, data[tc.from:tc.to]) {
				t.Errorf("range %s: got %d bytes, want [%d,%d)", tc.rng, len(got), tc.from, tc.to)
			}
		}
		etag := `"` + md5hex(data) + `"`
		past, future := time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
		for _, tc := range []struct {
			name string
			in   s3.GetObjectInput
			want int // HTTP status
		}{
			{"if-match ok", s3.GetObjectInput{IfMatch: aws.String(etag)}, 200},
			{"if-match wrong", s3.GetObjectInput{IfMatch: aws.String(`"abc"`)}, 412},
			{"if-none-match same", s3.GetObjectInput{IfNoneMatch: aws.String(etag)}, 304},
			{"if-none-match other", s3.GetObjectInput{IfNoneMatch: aws.String(`"abc"`)}, 200},
			{"if-modified-since future", s3.GetObjectInput{IfModifiedSince: &future}, 304},
			{"if-modified-since past", s3.GetObjectInput{IfModifiedSince: &past}, 200},
			{"if-unmodified-since past", s3.GetObjectInput{IfUnmodifiedSince: &past}, 412},
			{"if-unmodified-since future", s3.GetObjectInput{IfUnmodifiedSince: &future}, 200},
		} {
			in := tc.in
			in.Bucket, in.Key = &bucket, aws.String("range/obj")
			out, err := c.GetObject(ctx, &in)
			status := 200
			if err != nil {
				var re interface{ HTTPStatusCode() int }
				if !errors.As(err, &re) {
					t.Fatalf("%s: %v", tc.name, err)
				}
				status = re.HTTPStatusCode()
			} else {
				out.Body.Close()
			}
			if status != tc.want {
				t.Errorf("%s: status %d, want %d (%v)", tc.name, status, tc.want, err)
			}
		}
	})

	t.Run("Listing", func(t *testing.T) {
		b := "list-bucket"
		if _, err := c.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &b}); err != nil {
			t.Fatal(err)
		}
		keys := []string{"a.txt", "a/b/c", "a/b/d", "a/e", "a0", "b", "dir/", "z/y/x"}
		for _, k := range keys {
			e.put(t, b, k, nil)
		}
		all := func(in s3.ListObjectsV2Input) (ks, cps []string) {
			in.Bucket = &b
			p := s3.NewListObjectsV2Paginator(c, &in)
			for p.HasMorePages() {
				out, err := p.NextPage(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for _, o := range out.Contents {
					ks = append(ks, *o.Key)
				}
				for _, cp := range out.CommonPrefixes {
					cps = append(cps, *cp.Prefix)
				}
			}
			return ks, cps
		}
		for _, tc := range []struct {
			name      string
			in        s3.ListObjectsV2Input
			keys, cps []string
		}{
			{"all", s3.ListObjectsV2Input{}, keys, nil},
			{"paged", s3.ListObjectsV2Input{MaxKeys: aws.Int32(2)}, keys, nil},
			{"delimiter", s3.ListObjectsV2Input{Delimiter: aws.String("/")}, []string{"a.txt", "a0", "b"}, []string{"a/", "dir/", "z/"}},
			{"delimiter paged", s3.ListObjectsV2Input{Delimiter: aws.String("/"), MaxKeys: aws.Int32(1)}, []string{"a.txt", "a0", "b"}, []string{"a/", "dir/", "z/"}},
			{"prefix", s3.ListObjectsV2Input{Prefix: aws.String("a/")}, []string{"a/b/c", "a/b/d", "a/e"}, nil},
			{"prefix delimiter", s3.ListObjectsV2Input{Prefix: aws.String("a/"), Delimiter: aws.String("/")}, []string{"a/e"}, []string{"a/b/"}},
			{"partial prefix", s3.ListObjectsV2Input{Prefix: aws.String("a")}, []string{"a.txt", "a/b/c", "a/b/d", "a/e", "a0"}, nil},
			{"start-after", s3.ListObjectsV2Input{StartAfter: aws.String("a/b/c")}, []string{"a/b/d", "a/e", "a0", "b", "dir/", "z/y/x"}, nil},
			{"dir marker", s3.ListObjectsV2Input{Prefix: aws.String("dir/"), Delimiter: aws.String("/")}, []string{"dir/"}, nil},
		} {
			ks, cps := all(tc.in)
			if !slices.Equal(ks, tc.keys) || !slices.Equal(cps, tc.cps) {
				t.Errorf("%s: keys %v prefixes %v, want %v %v", tc.name, ks, cps, tc.keys, tc.cps)
			}
		}
		// ListObjects (v1) with a marker.
		out, err := c.ListObjects(ctx, &s3.ListObjectsInput{Bucket: &b, Marker: aws.String("a0"), MaxKeys: aws.Int32(2)})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Contents) != 2 || *out.Contents[0].Key != "b" || *out.Contents[1].Key != "dir/" || !aws.ToBool(out.IsTruncated) {
			t.Errorf("ListObjects v1: %d keys, truncated %v", len(out.Contents), aws.ToBool(out.IsTruncated))
		}
		// Multi-delete, then the emptied directories are gone.
		del := &types.Delete{}
		for _, k := range keys {
			del.Objects = append(del.Objects, types.ObjectIdentifier{Key: aws.String(k)})
		}
		dout, err := c.DeleteObjects(ctx, &s3.DeleteObjectsInput{Bucket: &b, Delete: del})
		if err != nil {
			t.Fatal(err)
		}
		if len(dout.Deleted) != len(keys) || len(dout.Errors) != 0 {
			t.Errorf("DeleteObjects: %d deleted, %d errors", len(dout.Deleted), len(dout.Errors))
		}
		if ks, cps := all(s3.ListObjectsV2Input{}); len(ks)+len(cps) != 0 {
			t.Errorf("after delete: %v %v", ks, cps)
		}
		ents, _ := os.ReadDir(filepath.Join(e.h.Mountpoint, b))
		if len(ents) != 0 {
			t.Errorf("the bucket directory still holds %d entries", len(ents))
		}
	})

	t.Run("Copy", func(t *testing.T) {
		data := randBytes(t, 700<<10)
		e.put(t, bucket, "copy/src", data)
		out, err := c.CopyObject(ctx, &s3.CopyObjectInput{Bucket: &bucket, Key: aws.String("copy/dst"), CopySource: aws.String("bkt/copy/src")})
		if err != nil {
			t.Fatal(err)
		}
		if strings.Trim(aws.ToString(out.CopyObjectResult.ETag), `"`) != md5hex(data) {
			t.Errorf("copy ETag %s", aws.ToString(out.CopyObjectResult.ETag))
		}
		if got := e.get(t, bucket, "copy/dst"); !bytes.Equal(got, data) {
			t.Error("copied data differs")
		}
		_, err = c.CopyObject(ctx, &s3.CopyObjectInput{Bucket: &bucket, Key: aws.String("copy/dst2"), CopySource: aws.String("bkt/copy/src"),
			CopySourceIfMatch: aws.String(`"nope"`)})
		if code(err) != "PreconditionFailed" {
			t.Errorf("copy with a failing condition: %v", err)
		}
	})

	t.Run("Multipart", func(t *testing.T) {
		key := "mp/object"
		p1, p2 := randBytes(t, 5<<20), randBytes(t, 1000)
		cr, err := c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &bucket, Key: &key, ContentType: aws.String("application/x-mp")})
		if err != nil {
			t.Fatal(err)
		}
		id := cr.UploadId
		var etags []string
		for i, p := range [][]byte{p1, p2} {
			out, err := c.UploadPart(ctx, &s3.UploadPartInput{Bucket: &bucket, Key: &key, UploadId: id, PartNumber: aws.Int32(int32(i + 1)), Body: bytes.NewReader(p)})
			if err != nil {
				t.Fatal(err)
			}
			etags = append(etags, aws.ToString(out.ETag))
		}
		lp, err := c.ListParts(ctx, &s3.ListPartsInput{Bucket: &bucket, Key: &key, UploadId: id})
		if err != nil || len(lp.Parts) != 2 || aws.ToInt64(lp.Parts[0].Size) != 5<<20 {
			t.Fatalf("ListParts: %v %+v", err, lp)
		}
		lu, err := c.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: &bucket})
		if err != nil || len(lu.Uploads) != 1 || aws.ToString(lu.Uploads[0].UploadId) != aws.ToString(id) {
			t.Errorf("ListMultipartUploads: %v %+v", err, lu)
		}
		complete := func(parts ...types.CompletedPart) error {
			_, err := c.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &bucket, Key: &key, UploadId: id,
				MultipartUpload: &types.CompletedMultipartUpload{Parts: parts}})
			return err
		}
		part := func(n int32, etag string) types.CompletedPart {
			return types.CompletedPart{PartNumber: aws.Int32(n), ETag: aws.String(etag)}
		}
		if err := complete(part(2, etags[1]), part(1, etags[0])); code(err) != "InvalidPartOrder" {
			t.Errorf("out of order: %v", err)
		}
		if err := complete(part(1, etags[0]), part(2, `"0123"`)); code(err) != "InvalidPart" {
			t.Errorf("wrong etag: %v", err)
		}
		if err := complete(part(2, etags[1]), part(3, etags[1])); code(err) != "InvalidPart" {
			t.Errorf("missing part: %v", err)
		}
		if err := complete(part(1, etags[0]), part(2, etags[1])); err != nil {
			t.Fatal(err)
		}
		h, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &bucket, Key: &key})
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(aws.ToString(h.ETag), `-2"`) || aws.ToString(h.ContentType) != "application/x-mp" {
			t.Errorf("multipart ETag %s, type %s", aws.ToString(h.ETag), aws.ToString(h.ContentType))
		}
		if got := e.get(t, bucket, key); !bytes.Equal(got, append(append([]byte{}, p1...), p2...)) {
			t.Error("multipart data differs")
		}
		if err := complete(part(1, etags[0])); code(err) != "NoSuchUpload" {
			t.Errorf("complete twice: %v", err)
		}
		// Too small parts, then abort.
		cr2, _ := c.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &bucket, Key: &key})
		var small []types.CompletedPart
		for i := int32(1); i <= 2; i++ {
			out, err := c.UploadPart(ctx, &s3.UploadPartInput{Bucket: &bucket, Key: &key, UploadId: cr2.UploadId, PartNumber: aws.Int32(i), Body: strings.NewReader("tiny")})
			if err != nil {
				t.Fatal(err)
			}
			small = append(small, part(i, aws.ToString(out.ETag)))
		}
		_, err = c.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &bucket, Key: &key, UploadId: cr2.UploadId,
			MultipartUpload: &types.CompletedMultipartUpload{Parts: small}})
		if code(err) != "EntityTooSmall" {
			t.Errorf("small parts: %v", err)
		}
		if _, err := c.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &bucket, Key: &key, UploadId: cr2.UploadId}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.ListParts(ctx, &s3.ListPartsInput{Bucket: &bucket, Key: &key, UploadId: cr2.UploadId}); code(err) != "NoSuchUpload" {
			t.Errorf("ListParts after abort: %v", err)
		}
	})

	t.Run("Presign", func(t *testing.T) {
		data := randBytes(t, 3000)
		e.put(t, bucket, "presigned obj", data)
		ps := s3.NewPresignClient(c)
		req, err := ps.PresignGetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: aws.String("presigned obj")}, s3.WithPresignExpires(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.Get(req.URL)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !bytes.Equal(got, data) {
			t.Errorf("presigned GET: %d, %d bytes", resp.StatusCode, len(got))
		}
		// Presigned PUT.
		preq, err := ps.PresignPutObject(ctx, &s3.PutObjectInput{Bucket: &bucket, Key: aws.String("presigned-put")}, s3.WithPresignExpires(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		hreq, _ := http.NewRequest(http.MethodPut, preq.URL, bytes.NewReader(data))
		for k, vs := range preq.SignedHeader {
			hreq.Header[k] = vs
		}
		if resp, err := http.DefaultClient.Do(hreq); err != nil || resp.StatusCode != 200 {
			t.Errorf("presigned PUT: %v %v", err, resp)
		} else {
			resp.Body.Close()
		}
		if got := e.get(t, bucket, "presigned-put"); !bytes.Equal(got, data) {
			t.Error("presigned PUT data differs")
		}
		// Tampered and expired URLs.
		resp, err = http.Get(strings.Replace(req.URL, "presigned%20obj", "range/obj", 1))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 403 || !strings.Contains(string(body), "SignatureDoesNotMatch") {
			t.Errorf("tampered presigned URL: %d %s", resp.StatusCode, body)
		}
		exp, err := ps.PresignGetObject(ctx, &s3.GetObjectInput{Bucket: &bucket, Key: aws.String("presigned obj")}, s3.WithPresignExpires(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(1100 * time.Millisecond)
		resp, err = http.Get(exp.URL)
		if err != nil {
			t.Fatal(err)
		}
		body, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 403 || !strings.Contains(string(body), "AccessDenied") {
			t.Errorf("expired presigned URL: %d %s", resp.StatusCode, body)
		}
	})

	t.Run("SignedChunked", func(t *testing.T) {
		data := randBytes(t, 200<<10+5)
		for _, tc := range []struct {
			name    string
			corrupt bool
			want    int
		}{{"good", false, 200}, {"bad chunk signature", true, 403}} {
			req := signedChunkedPut(t, e.url+"/bkt/chunked/"+strings.ReplaceAll(tc.name, " ", "-"), data, 64<<10, tc.corrupt)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("%s: status %d, want %d: %s", tc.name, resp.StatusCode, tc.want, body)
			}
		}
		if got := e.get(t, bucket, "chunked/good"); !bytes.Equal(got, data) {
			t.Error("chunked upload data differs")
		}
		if _, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &bucket, Key: aws.String("chunked/bad-chunk-signature")}); err == nil {
			t.Error("an upload with a bad chunk signature was stored")
		}
	})

	t.Run("PayloadHash", func(t *testing.T) {
		// A body that does not match its signed x-amz-content-sha256.
		req, _ := http.NewRequest(http.MethodPut, e.url+"/bkt/hash-mismatch", strings.NewReader("actual body"))
		signRequest(t, req, hexSHA256([]byte("declared body")))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(string(body), "XAmzContentSHA256Mismatch") {
			t.Errorf("hash mismatch: %d %s", resp.StatusCode, body)
		}
		if _, err := c.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &bucket, Key: aws.String("hash-mismatch")}); err == nil {
			t.Error("an upload with a wrong payload hash was stored")
		}
	})

	t.Run("Metrics", func(t *testing.T) {
		n := counterValue(t, e.reg, "datenlord_s3_requests_total", "PutObject", "200")
		if n < 5 {
			t.Errorf("datenlord_s3_requests_total{op=PutObject,code=200} = %v", n)
		}
	})
}

func counterValue(t *testing.T, reg *prometheus.Registry, name, op, code string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["op"] == op && labels["code"] == code {
				return m.GetCounter().GetValue()
			}
		}
	}
	t.Fatalf("no %s{op=%s,code=%s}", name, op, code)
	return 0
}

func hexSHA256(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// signRequest signs req in its header with the given payload hash.
func signRequest(t *testing.T, req *http.Request, payloadHash string) {
	t.Helper()
	req.Header.Set("X-Amz-Content-Sha256", payloadHash)
	s := v4.NewSigner()
	if err := s.SignHTTP(req.Context(), aws.Credentials{AccessKeyID: testAK, SecretAccessKey: testSK}, req, payloadHash, "s3", "us-east-1", time.Now()); err != nil {
		t.Fatal(err)
	}
}

// signedChunkedPut builds a STREAMING-AWS4-HMAC-SHA256-PAYLOAD upload of
// data in chunks of chunk bytes, signed with the SDK's signers; corrupt
// breaks the second chunk's signature.
func signedChunkedPut(t *testing.T, url string, data []byte, chunk int, corrupt bool) *http.Request {
	t.Helper()
	now := time.Now().UTC()
	n := (len(data) + chunk - 1) / chunk
	encLen := 0
	for i := 0; i <= n; i++ {
		size := 0
		if i < n {
			size = min(chunk, len(data)-i*chunk)
		}
		encLen += len(fmt.Sprintf("%x", size)) + len(";chunk-signature=") + 64 + 2 + size + 2
	}
	req, _ := http.NewRequest(http.MethodPut, url, nil)
	req.ContentLength = int64(encLen)
	req.Header.Set("Content-Encoding", "aws-chunked")
	req.Header.Set("X-Amz-Decoded-Content-Length", fmt.Sprint(len(data)))
	signRequest(t, req, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
	auth := req.Header.Get("Authorization")
	seedHex := auth[strings.LastIndex(auth, "Signature=")+len("Signature="):]
	seed, _ := hex.DecodeString(seedHex)
	ss := v4.NewStreamSigner(aws.Credentials{AccessKeyID: testAK, SecretAccessKey: testSK}, "s3", "us-east-1", seed)
	var body bytes.Buffer
	for i := 0; i <= n; i++ {
		var p []byte
		if i < n {
			p = data[i*chunk : min((i+1)*chunk, len(data))]
		}
		sig, err := ss.GetSignature(context.Background(), nil, p, now)
		if err != nil {
			t.Fatal(err)
		}
		sh := hex.EncodeToString(sig)
		if corrupt && i == 1 {
			sh = strings.Repeat("0", 64)
		}
		fmt.Fprintf(&body, "%x;chunk-signature=%s\r\n", len(p), sh)
		body.Write(p)
		body.WriteString("\r\n")
	}
	if body.Len() != encLen {
		t.Fatalf("encoded %d bytes, computed %d", body.Len(), encLen)
	}
	req.Body = io.NopCloser(&body)
	return req
}

// TestTLSTrailerChecksum uploads over HTTPS with an unseekable body, which
// the SDK sends as STREAMING-UNSIGNED-PAYLOAD-TRAILER with a CRC32
// trailer.
func TestTLSTrailerChecksum(t *testing.T) {
	e := startEnv(t, selfSigned(t))
	ctx := t.Context()
	if _, err := e.client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String("tls-bucket")}); err != nil {
		t.Fatal(err)
	}
	data := randBytes(t, 300<<10)
	_, err := e.client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String("tls-bucket"), Key: aws.String("trailer"),
		Body: struct{ io.Reader }{bytes.NewReader(data)}, ContentLength: aws.Int64(int64(len(data))),
		ChecksumAlgorithm: types.ChecksumAlgorithmCrc32})
	if err != nil {
		t.Fatal(err)
	}
	if got := e.get(t, "tls-bucket", "trailer"); !bytes.Equal(got, data) {
		t.Error("trailer upload data differs")
	}
}
