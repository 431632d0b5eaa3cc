package s3gw

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// AWS Signature Version 4, as S3 uses it.
//
// A request is signed either in the Authorization header or in the query
// (a presigned URL). The canonical request is rebuilt from what arrived:
// the method, the path URI-encoded the way the SDKs encode it (every byte
// but the unreserved ones and '/'), the sorted query, the signed headers
// and the payload hash the client declared (x-amz-content-sha256; a
// presigned URL is UNSIGNED-PAYLOAD). A hex payload hash is then checked
// against the body as it streams (payloadReader), and an aws-chunked body
// is decoded with its per-chunk signatures checked (chunked.go).

const (
	algorithm = "AWS4-HMAC-SHA256"
	// maxSkew is how far a signed request's time may be from ours.
	maxSkew = 15 * time.Minute
	// maxPresignExpiry is the longest X-Amz-Expires (7 days).
	maxPresignExpiry = 7 * 24 * time.Hour

	unsignedPayload        = "UNSIGNED-PAYLOAD"
	streamingSigned        = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
	streamingSignedTrailer = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
	streamingUnsignedTrail = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
	emptySHA256            = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	amzDateFormat          = "20060102T150405Z"
)

// SecretLookup returns the secret of an access key.
type SecretLookup func(accessKey string) (secret string, ok bool)

// authInfo is a verified request's signing context, which the decoding of
// an aws-chunked body goes on with.
type authInfo struct {
	accessKey   string
	payloadHash string // x-amz-content-sha256 as declared
	signingKey  []byte
	amzDate     string
	scope       string
	signature   string
}

// credential is the parsed Credential field.
type credential struct {
	accessKey, date, region, service string
}

func parseCredential(s string) (credential, *apiError) {
	parts := strings.Split(s, "/")
	if len(parts) != 5 || parts[4] != "aws4_request" || parts[0] == "" {
		return credential{}, s3err(codeAuthorizationMalformed, "the Credential %q is malformed; want ACCESS_KEY/DATE/REGION/s3/aws4_request", s)
	}
	if parts[3] != "s3" {
		return credential{}, s3err(codeAuthorizationMalformed, "the credential's service is %q, want s3", parts[3])
	}
	if _, err := time.Parse("20060102", parts[1]); err != nil {
		return credential{}, s3err(codeAuthorizationMalformed, "the credential's date %q is malformed", parts[1])
	}
	return credential{accessKey: parts[0], date: parts[1], region: parts[2], service: parts[3]}, nil
}

// verify authenticates r against secrets at time now.
func verify(r *http.Request, secrets SecretLookup, now time.Time) (*authInfo, *apiError) {
	q := r.URL.Query()
	if auth := r.Header.Get("Authorization"); auth != "" {
		return verifyHeader(r, auth, secrets, now)
	}
	if q.Get("X-Amz-Algorithm") != "" || q.Get("X-Amz-Signature") != "" {
		return verifyQuery(r, q, secrets, now)
	}
	if q.Get("Signature") != "" || q.Get("AWSAccessKeyId") != "" {
		return nil, s3err(codeInvalidRequest, "Signature Version 2 is not supported; use AWS4-HMAC-SHA256")
	}
	return nil, s3err(codeAccessDenied, "anonymous requests are not allowed; sign the request with AWS Signature V4")
}

func verifyHeader(r *http.Request, auth string, secrets SecretLookup, now time.Time) (*authInfo, *apiError) {
	rest, ok := strings.CutPrefix(auth, algorithm+" ")
	if !ok {
		if strings.HasPrefix(auth, "AWS ") {
			return nil, s3err(codeInvalidRequest, "Signature Version 2 is not supported; use AWS4-HMAC-SHA256")
		}
		return nil, s3err(codeAuthorizationMalformed, "unsupported authorization algorithm; want %s", algorithm)
	}
	var credStr, signed, sig string
	for f := range strings.SplitSeq(rest, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(f), "=")
		if !ok {
			return nil, s3err(codeAuthorizationMalformed, "the authorization header field %q is malformed", f)
		}
		switch k {
		case "Credential":
			credStr = v
		case "SignedHeaders":
			signed = v
		case "Signature":
			sig = v
		}
	}
	if credStr == "" || signed == "" || sig == "" {
		return nil, s3err(codeAuthorizationMalformed, "the authorization header needs Credential, SignedHeaders and Signature")
	}
	cred, aerr := parseCredential(credStr)
	if aerr != nil {
		return nil, aerr
	}
	amzDate := r.Header.Get("X-Amz-Date")
	if amzDate == "" {
		amzDate = r.Header.Get("Date")
	}
	t, err := time.Parse(amzDateFormat, amzDate)
	if err != nil {
		if t2, err2 := http.ParseTime(amzDate); err2 == nil {
			t, err, amzDate = t2, nil, t2.UTC().Format(amzDateFormat)
		}
	}
	if err != nil {
		return nil, s3err(codeAccessDenied, "the request has no valid X-Amz-Date")
	}
	if d := now.Sub(t); d > maxSkew || d < -maxSkew {
		return nil, s3err(codeRequestTimeTooSkewed, "the difference between the request time and the server's time is too large")
	}
	if !strings.HasPrefix(amzDate, cred.date) {
		return nil, s3err(codeAuthorizationMalformed, "the credential date %s does not match X-Amz-Date %s", cred.date, amzDate)
	}
	payload := r.Header.Get("X-Amz-Content-Sha256")
	if payload == "" {
		return nil, s3err(codeInvalidRequest, "missing required header X-Amz-Content-Sha256")
	}
	if !validPayloadHash(payload) {
		return nil, s3err(codeInvalidArgument, "x-amz-content-sha256 %q is neither a SHA-256 hex digest nor a known payload mode", payload)
	}
	signedHeaders := strings.Split(signed, ";")
	if !slices.Contains(signedHeaders, "host") {
		return nil, s3err(codeAuthorizationMalformed, "SignedHeaders must include host")
	}
	return check(r, cred, amzDate, signedHeaders, payload, sig, "", secrets)
}

func verifyQuery(r *http.Request, q url.Values, secrets SecretLookup, now time.Time) (*authInfo, *apiError) {
	if q.Get("X-Amz-Algorithm") != algorithm {
		return nil, s3err(codeAuthorizationMalformed, "X-Amz-Algorithm must be %s", algorithm)
	}
	cred, aerr := parseCredential(q.Get("X-Amz-Credential"))
	if aerr != nil {
		return nil, aerr
	}
	amzDate := q.Get("X-Amz-Date")
	t, err := time.Parse(amzDateFormat, amzDate)
	if err != nil {
		return nil, s3err(codeAuthorizationMalformed, "X-Amz-Date %q is malformed", amzDate)
	}
	if !strings.HasPrefix(amzDate, cred.date) {
		return nil, s3err(codeAuthorizationMalformed, "the credential date does not match X-Amz-Date")
	}
	exp, err := strconv.ParseInt(q.Get("X-Amz-Expires"), 10, 64)
	if err != nil || exp < 0 {
		return nil, s3err(codeAuthorizationMalformed, "X-Amz-Expires must be a non-negative number of seconds")
	}
	if time.Duration(exp)*time.Second > maxPresignExpiry {
		return nil, s3err(codeAuthorizationMalformed, "X-Amz-Expires must be at most 604800 seconds")
	}
	if t.Sub(now) > maxSkew {
		return nil, s3err(codeAccessDenied, "the presigned request is not valid yet")
	}
	if now.After(t.Add(time.Duration(exp) * time.Second)) {
		return nil, s3err(codeAccessDenied, "Request has expired")
	}
	sig := q.Get("X-Amz-Signature")
	signed := q.Get("X-Amz-SignedHeaders")
	if sig == "" || signed == "" {
		return nil, s3err(codeAuthorizationMalformed, "a presigned URL needs X-Amz-Signature and X-Amz-SignedHeaders")
	}
	signedHeaders := strings.Split(signed, ";")
	if !slices.Contains(signedHeaders, "host") {
		return nil, s3err(codeAuthorizationMalformed, "X-Amz-SignedHeaders must include host")
	}
	payload := unsignedPayload
	if p := q.Get("X-Amz-Content-Sha256"); p != "" {
		payload = p
	}
	if !validPayloadHash(payload) || strings.HasPrefix(payload, "STREAMING-") {
		return nil, s3err(codeInvalidArgument, "unsupported payload hash %q for a presigned request", payload)
	}
	return check(r, cred, amzDate, signedHeaders, payload, sig, "X-Amz-Signature", secrets)
}

// validPayloadHash reports whether p is a hex SHA-256 or a known mode.
func validPayloadHash(p string) bool {
	switch p {
	case unsignedPayload, streamingSigned, streamingSignedTrailer, streamingUnsignedTrail:
		return true
	}
	if len(p) != 64 {
		return false
	}
	_, err := hex.DecodeString(p)
	return err == nil
}

// check computes the signature of r and compares it with sig.
func check(r *http.Request, cred credential, amzDate string, signedHeaders []string, payload, sig, skipQuery string, secrets SecretLookup) (*authInfo, *apiError) {
	secret, ok := secrets(cred.accessKey)
	if !ok {
		return nil, s3err(codeInvalidAccessKeyID, "the access key id you provided does not exist in our records")
	}
	canon, aerr := canonicalRequest(r, signedHeaders, payload, skipQuery)
	if aerr != nil {
		return nil, aerr
	}
	scope := cred.date + "/" + cred.region + "/" + cred.service + "/aws4_request"
	sts := algorithm + "\n" + amzDate + "\n" + scope + "\n" + hexSHA256([]byte(canon))
	key := signingKey(secret, cred.date, cred.region, cred.service)
	want := hex.EncodeToString(hmacSHA256(key, []byte(sts)))
	if !hmac.Equal([]byte(want), []byte(strings.ToLower(sig))) {
		return nil, s3err(codeSignatureDoesNotMatch, "the request signature we calculated does not match the signature you provided; check your key and signing method")
	}
	return &authInfo{accessKey: cred.accessKey, payloadHash: payload, signingKey: key,
		amzDate: amzDate, scope: scope, signature: want}, nil
}

// canonicalRequest builds the SigV4 canonical request of r.
func canonicalRequest(r *http.Request, signedHeaders []string, payload, skipQuery string) (string, *apiError) {
	var b strings.Builder
	b.WriteString(r.Method)
	b.WriteByte('\n')
	path := r.URL.Path
	if path == "" {
		path = "/"
	}
	b.WriteString(uriEncode(path, false))
	b.WriteByte('\n')
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return "", s3err(codeInvalidArgument, "the query string is malformed")
	}
	type kv struct{ k, v string }
	var pairs []kv
	for k, vs := range q {
		if k == skipQuery {
			continue
		}
		for _, v := range vs {
			pairs = append(pairs, kv{uriEncode(k, true), uriEncode(v, true)})
		}
	}
	slices.SortFunc(pairs, func(a, b kv) int {
		if c := strings.Compare(a.k, b.k); c != 0 {
			return c
		}
		return strings.Compare(a.v, b.v)
	})
	for i, p := range pairs {
		if i > 0 {
			b.WriteByte('&')
		}
		b.WriteString(p.k)
		b.WriteByte('=')
		b.WriteString(p.v)
	}
	b.WriteByte('\n')
	for _, h := range signedHeaders {
		if h == "" || h != strings.ToLower(h) {
			return "", s3err(codeAuthorizationMalformed, "signed header %q is not a lower-case header name", h)
		}
		var v string
		switch h {
		case "host":
			v = r.Host
		case "content-length":
			v = r.Header.Get("Content-Length")
			if v == "" && r.ContentLength >= 0 {
				v = strconv.FormatInt(r.ContentLength, 10)
			}
		case "transfer-encoding":
			v = strings.Join(r.TransferEncoding, ",")
		default:
			vals := r.Header.Values(h)
			for i := range vals {
				vals[i] = collapseSpaces(vals[i])
			}
			v = strings.Join(vals, ",")
		}
		b.WriteString(h)
		b.WriteByte(':')
		b.WriteString(collapseSpaces(v))
		b.WriteByte('\n')
	}
	b.WriteByte('\n')
	b.WriteString(strings.Join(signedHeaders, ";"))
	b.WriteByte('\n')
	b.WriteString(payload)
	return b.String(), nil
}

// collapseSpaces trims s and replaces runs of spaces with one.
func collapseSpaces(s string) string {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "  ") {
		return s
	}
	return strings.Join(strings.Fields(s), " ")
}

// uriEncode percent-encodes every byte of s but A-Z a-z 0-9 - _ . ~ (and
// '/' unless slash is set), as SigV4 does.
func uriEncode(s string, slash bool) string {
	const hexd = "0123456789ABCDEF"
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || '0' <= c && c <= '9' ||
			c == '-' || c == '_' || c == '.' || c == '~' || c == '/' && !slash {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexd[c>>4])
		b.WriteByte(hexd[c&15])
	}
	return b.String()
}

func hmacSHA256(key, data []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(data)
	return m.Sum(nil)
}

func hexSHA256(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func signingKey(secret, date, region, service string) []byte {
	k := hmacSHA256([]byte("AWS4"+secret), []byte(date))
	k = hmacSHA256(k, []byte(region))
	k = hmacSHA256(k, []byte(service))
	return hmacSHA256(k, []byte("aws4_request"))
}

// sha256Reader passes a body through and, at its end, fails unless the
// body's SHA-256 is want (the declared x-amz-content-sha256).
type sha256Reader struct {
	r    io.Reader
	h    hash.Hash
	want string
	err  error
}

func newSHA256Reader(r io.Reader, want string) *sha256Reader {
	return &sha256Reader{r: r, h: sha256.New(), want: strings.ToLower(want)}
}

func (s *sha256Reader) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	n, err := s.r.Read(p)
	s.h.Write(p[:n])
	if err == io.EOF {
		if got := hex.EncodeToString(s.h.Sum(nil)); got != s.want {
			s.err = s3err(codeSHA256Mismatch, "the provided x-amz-content-sha256 header does not match what was computed")
			return n, s.err
		}
	}
	if err != nil {
		s.err = err
	}
	return n, err
}
