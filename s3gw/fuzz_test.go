package s3gw

import (
	"bytes"
	"encoding/xml"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// FuzzChunked decodes arbitrary aws-chunked bodies in every mode: the
// decoder must never panic, and what it returns on success is at most the
// body's size.
func FuzzChunked(f *testing.F) {
	f.Add([]byte("5;chunk-signature="+strings.Repeat("a", 64)+"\r\nhello\r\n0;chunk-signature="+strings.Repeat("b", 64)+"\r\n\r\n"), uint8(0))
	f.Add([]byte("5\r\nhello\r\n0\r\nx-amz-checksum-crc32:NhCmhg==\r\n\r\n"), uint8(2))
	f.Add([]byte("ffffffffffffffff\r\n"), uint8(2))
	f.Add([]byte("0;chunk-signature="+strings.Repeat("c", 64)+"\r\nx-amz-trailer-signature:abc\r\n\r\n"), uint8(1))
	modes := []string{streamingSigned, streamingSignedTrailer, streamingUnsignedTrail}
	auth := &authInfo{signingKey: []byte("key"), amzDate: "20240101T000000Z", scope: "20240101/us-east-1/s3/aws4_request", signature: strings.Repeat("0", 64)}
	f.Fuzz(func(t *testing.T, body []byte, mode uint8) {
		m := modes[int(mode)%len(modes)]
		trailer := ""
		if m != streamingSigned {
			trailer = "x-amz-checksum-crc32"
		}
		cr, aerr := newChunkedReader(bytes.NewReader(body), m, auth, trailer)
		if aerr != nil {
			t.Fatal(aerr)
		}
		out, _ := io.ReadAll(io.LimitReader(cr, int64(len(body))+1))
		if len(out) > len(body) {
			t.Fatalf("decoded %d bytes from a %d-byte body", len(out), len(body))
		}
	})
}

// FuzzVerify authenticates requests with arbitrary Authorization headers,
// dates, payload hashes and query strings: no panic, and never success
// without the right signature (the fuzzer cannot find an HMAC).
func FuzzVerify(f *testing.F) {
	f.Add("AWS4-HMAC-SHA256 Credential=AK/20240101/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc", "20240101T000000Z", "UNSIGNED-PAYLOAD", "a=b&c")
	f.Add("", "", "", "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AK%2F20240101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20240101T000000Z&X-Amz-Expires=60&X-Amz-SignedHeaders=host&X-Amz-Signature=00")
	f.Add("AWS abc:def", "", "", "")
	f.Add("AWS4-HMAC-SHA256 Credential=AK/20240101/us-east-1/s3/aws4_request,SignedHeaders=HOST;;,Signature=", "20240101T000000Z", strings.Repeat("a", 64), "%zz")
	now := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	secrets := func(ak string) (string, bool) { return "secret", ak == "AK" }
	f.Fuzz(func(t *testing.T, auth, date, payload, query string) {
		r := httptest.NewRequest(http.MethodGet, "http://127.0.0.1/b/k", nil)
		r.URL.RawQuery = query
		for k, v := range map[string]string{"Authorization": auth, "X-Amz-Date": date, "X-Amz-Content-Sha256": payload} {
			if v != "" && !strings.ContainsAny(v, "\r\n\x00") {
				r.Header.Set(k, v)
			}
		}
		if ai, err := verify(r, secrets, now); err == nil {
			t.Fatalf("verified a request without a valid signature: %+v", ai)
		}
	})
}

// FuzzParse runs the other parsers of network input: keys, ranges, copy
// sources and the XML bodies.
func FuzzParse(f *testing.F) {
	f.Add("a/b/c", "bytes=0-10", "/bkt/a%20b", []byte("<Delete><Object><Key>a</Key></Object></Delete>"))
	f.Add("a//b/", "bytes=-5", "bkt", []byte("<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>x</ETag></Part></CompleteMultipartUpload>"))
	f.Add("../x", "bytes=5-1", "%", []byte("<"))
	f.Fuzz(func(t *testing.T, key, rng, src string, body []byte) {
		if segs, dir, err := splitKey(key); err == nil {
			for _, s := range segs {
				if s == "" || s == "." || s == ".." || len(s) > maxSegment || strings.Contains(s, "/") {
					t.Fatalf("splitKey(%q) accepted segment %q (dir %v)", key, s, dir)
				}
			}
		}
		for _, size := range []int64{0, 1, 1000} {
			br, ok, err := parseRange(rng, size)
			if err == nil && ok && (br.start < 0 || br.length <= 0 || br.start+br.length > size) {
				t.Fatalf("parseRange(%q, %d) = %+v", rng, size, br)
			}
		}
		_, _, _ = copySource(src)
		var d deleteRequest
		_ = xml.Unmarshal(body, &d)
		var c completeRequest
		_ = xml.Unmarshal(body, &c)
		_ = validBucketName(key)
	})
}
