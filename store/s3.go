package store

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/prometheus/client_golang/prometheus"
)

// Layout of an S3 store: one object per block,
//
//	<prefix>/blocks/<id>           id as 16 lower-case hex digits
//	<prefix>/blocks/.probe.<rnd>   a Check in progress (or left by a crash)
//
// (without "<prefix>/" when the URL has no prefix). List reads back only
// keys of exactly that form, so foreign objects under the prefix are
// ignored.
const s3BlocksDir = "blocks/"

// S3Options tune the s3:// backend beyond its URL. The zero value takes
// credentials from the AWS SDK's default chain (AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY first, then the shared config, then instance
// roles), which is what deployments use.
type S3Options struct {
	// AccessKeyID and SecretAccessKey, when set (both or neither), are
	// used instead of the default credential chain.
	AccessKeyID     string
	SecretAccessKey string
	// MinPartSize, when positive, lowers the smallest part-size the URL may
	// ask for below S3's 5 MiB, so tests can exercise multipart uploads with
	// small blocks (against a server that allows small parts).
	MinPartSize int64
}

// S3Store is the s3:// backend: one object per block in a bucket, written
// with PutObject (multipart above the part size) and read with ranged
// GETs. All requests share a bound on concurrency; each attempt has a
// timeout and failed attempts are retried with jittered exponential
// back-off when the failure is transient. It is safe for concurrent use.
type S3Store struct {
	cfg       s3Config
	client    *s3.Client
	creds     aws.CredentialsProvider
	transport *http.Transport
	sem       chan struct{}
	log       *slog.Logger
	metrics   *metrics
	retries   *prometheus.CounterVec
	closeGuard
	// listPageSize, when positive, caps the keys per ListObjectsV2 page
	// (tests page through a few blocks with it; S3's default is 1000).
	listPageSize int32
}

var _ Store = (*S3Store)(nil)

// openS3 opens the store named by an s3:// URL. It does no I/O: Check
// talks to the server.
func openS3(ctx context.Context, u *url.URL, opts Options) (*S3Store, error) {
	cfg, err := parseS3URL(u, opts.S3.MinPartSize)
	if err != nil {
		return nil, fmt.Errorf("store open %q: %w", u.Redacted(), err)
	}
	if (opts.S3.AccessKeyID == "") != (opts.S3.SecretAccessKey == "") {
		return nil, fmt.Errorf("store open %s: S3Options needs both AccessKeyID and SecretAccessKey, or neither", cfg)
	}
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("store open %s: register metrics: %w", cfg, err)
	}
	retries, err := newRetryCounter(opts.Registerer)
	if err != nil {
		return nil, fmt.Errorf("store open %s: register metrics: %w", cfg, err)
	}

	// Our own transport: enough idle connections for the concurrency bound
	// (Go keeps 2 per host by default and would reconnect constantly), and
	// a handle to close them on Close. It goes through the SDK's buildable
	// client first so the configuration (AWS_CA_BUNDLE) applies to it.
	load := []func(*config.LoadOptions) error{
		config.WithHTTPClient(awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
			tr.MaxIdleConns = cfg.concurrency * 2
			tr.MaxIdleConnsPerHost = cfg.concurrency * 2
			tr.ResponseHeaderTimeout = cfg.timeout
		})),
		// Retries are ours (do): one loop, one back-off, one metric.
		config.WithRetryer(func() aws.Retryer { return aws.NopRetryer{} }),
	}
	if cfg.region != "" {
		load = append(load, config.WithRegion(cfg.region))
	}
	if opts.S3.AccessKeyID != "" {
		load = append(load, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(opts.S3.AccessKeyID, opts.S3.SecretAccessKey, "")))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, load...)
	if err != nil {
		return nil, fmt.Errorf("store open %s: load AWS configuration: %w", cfg, err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = DefaultS3Region
	}
	bc, ok := awsCfg.HTTPClient.(*awshttp.BuildableClient)
	if !ok {
		return nil, fmt.Errorf("store open %s: unexpected AWS HTTP client %T", cfg, awsCfg.HTTPClient)
	}
	tr := bc.GetTransport()
	httpClient := &http.Client{
		Transport: tr,
		// S3 redirects mean a wrong region: report them, do not follow.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	client := s3.NewFromConfig(awsCfg, func(o *s3.Options) {
		if cfg.endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.endpoint)
			o.UsePathStyle = true
		}
		o.Retryer = aws.NopRetryer{}
		o.HTTPClient = httpClient
		// Checksums only where S3 requires them: S3-compatible servers
		// differ in their support of trailing CRC checksums (aws-chunked
		// uploads), and SigV4 already signs the payload hash over plain
		// HTTP (TLS protects it over HTTPS).
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	s := &S3Store{
		cfg:       cfg,
		client:    client,
		creds:     awsCfg.Credentials,
		transport: tr,
		sem:       make(chan struct{}, cfg.concurrency),
		metrics:   m,
		retries:   retries,
	}
	s.log = log.With("store", s.String())
	return s, nil
}

// String returns the store URL (which never holds credentials).
func (s *S3Store) String() string { return s.cfg.String() }

// key returns the object key of block id.
func (s *S3Store) key(id uint64) string {
	return s.blocksPrefix() + fmt.Sprintf("%016x", id)
}

// blocksPrefix is the key prefix of all blocks: "<prefix>/blocks/".
func (s *S3Store) blocksPrefix() string {
	if s.cfg.prefix == "" {
		return s3BlocksDir
	}
	return s.cfg.prefix + "/" + s3BlocksDir
}

// Put uploads the block: one PutObject up to the part size, a multipart
// upload above it (aborted on failure). S3 makes an object visible only
// when complete, and durable when the request returns.
func (s *S3Store) Put(ctx context.Context, id uint64, data []byte) (err error) {
	start := time.Now()
	defer func() { s.metrics.observe(opPut, start, err) }()
	if err := s.usable(ctx); err != nil {
		return fmt.Errorf("store put block 0x%016x: %w", id, err)
	}
	key := s.key(id)
	if int64(len(data)) > s.cfg.partSize {
		if err := s.putMultipart(ctx, key, data); err != nil {
			return fmt.Errorf("store put block 0x%016x: %w", id, err)
		}
		return nil
	}
	if err := s.putObject(ctx, opPut, key, data); err != nil {
		return fmt.Errorf("store put block 0x%016x: %w", id, err)
	}
	return nil
}

// putObject writes data to key with a single PutObject.
func (s *S3Store) putObject(ctx context.Context, op, key string, data []byte) error {
	return s.do(ctx, op, "PutObject", key, func(ctx context.Context) error {
		_, err := s.client.PutObject(ctx, &s3.PutObjectInput{
			Bucket:        aws.String(s.cfg.bucket),
			Key:           aws.String(key),
			Body:          bytes.NewReader(data),
			ContentLength: aws.Int64(int64(len(data))),
		})
		return err
	})
}

// ReadAt reads with one ranged GET (bytes=off-(off+len(dst)-1)). A range
// past the end of the block is S3's 416, which is a zero-length read here.
func (s *S3Store) ReadAt(ctx context.Context, id uint64, off int64, dst []byte) (n int, err error) {
	start := time.Now()
	defer func() { s.metrics.observe(opGet, start, err) }()
	if err := s.usable(ctx); err != nil {
		return 0, fmt.Errorf("store read block 0x%016x: %w", id, err)
	}
	if off < 0 {
		return 0, fmt.Errorf("store read block 0x%016x: negative offset %d", id, off)
	}
	key := s.key(id)
	if len(dst) == 0 {
		// No range can ask for nothing; a HEAD still tells a missing block.
		err := s.do(ctx, opGet, "HeadObject", key, func(ctx context.Context) error {
			_, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.cfg.bucket), Key: aws.String(key)})
			return err
		})
		if err != nil {
			return 0, s.readError(id, err)
		}
		return 0, nil
	}
	end := off + int64(len(dst)) - 1
	if end < off { // overflow: the block cannot be that long anyway
		end = math.MaxInt64
	}
	rng := "bytes=" + strconv.FormatInt(off, 10) + "-" + strconv.FormatInt(end, 10)
	err = s.do(ctx, opGet, "GetObject", key, func(ctx context.Context) error {
		n = 0
		out, err := s.client.GetObject(ctx, &s3.GetObjectInput{
			Bucket: aws.String(s.cfg.bucket),
			Key:    aws.String(key),
			Range:  aws.String(rng),
		})
		if err != nil {
			return err
		}
		defer out.Body.Close()
		n, err = readRange(out, off, dst)
		return err
	})
	if err != nil {
		if isInvalidRange(err) {
			return 0, nil
		}
		return 0, s.readError(id, err)
	}
	return n, nil
}

func (s *S3Store) readError(id uint64, err error) error {
	if isNoSuchKey(err) {
		return fmt.Errorf("store read block 0x%016x: %w (%v)", id, ErrNotFound, err)
	}
	return fmt.Errorf("store read block 0x%016x: %w", id, err)
}

// readRange copies the body of a ranged GET for [off, off+len(dst)) into
// dst and returns the byte count, checking what the server says it sent.
// A body shorter than announced is errTruncated (retried); a response for
// another range is an error, never a panic or silently wrong bytes.
func readRange(out *s3.GetObjectOutput, off int64, dst []byte) (int, error) {
	want := int64(len(dst))
	switch {
	case out.ContentRange != nil:
		first, last, err := parseContentRange(*out.ContentRange)
		if err != nil {
			return 0, err
		}
		if first != off {
			return 0, fmt.Errorf("server sent range %q for a request at offset %d", *out.ContentRange, off)
		}
		want = min(want, last-first+1)
	case off != 0:
		return 0, fmt.Errorf("server ignored the Range header (no Content-Range in the response)")
	case out.ContentLength != nil && *out.ContentLength >= 0:
		want = min(want, *out.ContentLength)
	default:
		// A whole object of unknown length from offset 0: read what comes.
		n, err := io.ReadFull(out.Body, dst)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			err = nil
		}
		if err != nil {
			return 0, fmt.Errorf("read body: %w", err)
		}
		return n, nil
	}
	n, err := io.ReadFull(out.Body, dst[:want])
	if err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return 0, fmt.Errorf("%w: got %d of %d bytes", errTruncated, n, want)
		}
		return 0, fmt.Errorf("read body: %w", err)
	}
	return n, nil
}

// parseContentRange parses "bytes FIRST-LAST/TOTAL" (TOTAL may be *).
func parseContentRange(v string) (first, last int64, err error) {
	spec, ok := strings.CutPrefix(strings.TrimSpace(v), "bytes ")
	if ok {
		spec, _, ok = strings.Cut(spec, "/")
	}
	var a, b string
	if ok {
		a, b, ok = strings.Cut(spec, "-")
	}
	if ok {
		first, err = strconv.ParseInt(a, 10, 64)
		ok = err == nil
	}
	if ok {
		last, err = strconv.ParseInt(b, 10, 64)
		ok = err == nil
	}
	if !ok || first < 0 || last < first {
		return 0, 0, fmt.Errorf("malformed Content-Range %q from server", v)
	}
	return first, last, nil
}

// Delete removes the block's object; S3 answers a missing one with
// success, and a server that says NoSuchKey is taken at its word.
func (s *S3Store) Delete(ctx context.Context, id uint64) (err error) {
	start := time.Now()
	defer func() { s.metrics.observe(opDelete, start, err) }()
	if err := s.usable(ctx); err != nil {
		return fmt.Errorf("store delete block 0x%016x: %w", id, err)
	}
	if err := s.deleteObject(ctx, opDelete, s.key(id)); err != nil {
		return fmt.Errorf("store delete block 0x%016x: %w", id, err)
	}
	return nil
}

func (s *S3Store) deleteObject(ctx context.Context, op, key string) error {
	err := s.do(ctx, op, "DeleteObject", key, func(ctx context.Context) error {
		_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.cfg.bucket), Key: aws.String(key)})
		return err
	})
	if err != nil && !isNoSuchKey(err) {
		return err
	}
	return nil
}

// List pages through the objects under <prefix>/blocks/ with
// ListObjectsV2 (each page retried on its own) and calls fn for every key
// that names a block. An error from fn stops the listing and is returned
// wrapped.
func (s *S3Store) List(ctx context.Context, fn func(id uint64) error) (err error) {
	start := time.Now()
	defer func() { s.metrics.observe(opList, start, err) }()
	if err := s.usable(ctx); err != nil {
		return fmt.Errorf("store list %s: %w", s, err)
	}
	prefix := s.blocksPrefix()
	var token *string
	for page := 1; ; page++ {
		var out *s3.ListObjectsV2Output
		err := s.do(ctx, opList, "ListObjectsV2", prefix, func(ctx context.Context) error {
			o, err := s.client.ListObjectsV2(ctx, &s3.ListObjectsV2Input{
				Bucket:            aws.String(s.cfg.bucket),
				Prefix:            aws.String(prefix),
				ContinuationToken: token,
				MaxKeys:           maxKeys(s.listPageSize),
			})
			out = o
			return err
		})
		if err != nil {
			return fmt.Errorf("store list %s: page %d: %w", s, page, err)
		}
		if out == nil {
			return fmt.Errorf("store list %s: page %d: empty response", s, page)
		}
		for _, obj := range out.Contents {
			name, ok := strings.CutPrefix(aws.ToString(obj.Key), prefix)
			if !ok {
				continue
			}
			id, ok := parseBlockName(name)
			if !ok {
				continue
			}
			if err := fn(id); err != nil {
				return fmt.Errorf("store list: block 0x%016x: %w", id, err)
			}
		}
		if !aws.ToBool(out.IsTruncated) {
			return nil
		}
		next := aws.ToString(out.NextContinuationToken)
		if next == "" || next == aws.ToString(token) {
			return fmt.Errorf("store list %s: page %d: server says the listing is truncated but gives no new continuation token", s, page)
		}
		token = aws.String(next)
	}
}

// Check verifies credentials, the bucket (HeadBucket, with a clear error
// for a missing bucket, denied access or an unreachable endpoint) and
// write access (a probe object put and deleted).
func (s *S3Store) Check(ctx context.Context) (err error) {
	start := time.Now()
	defer func() { s.metrics.observe(opCheck, start, err) }()
	if err := s.usable(ctx); err != nil {
		return fmt.Errorf("store check %s: %w", s, err)
	}
	if s.creds == nil {
		return fmt.Errorf("store check %s: no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)", s)
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.timeout)
	_, err = s.creds.Retrieve(cctx)
	cancel()
	if err != nil {
		return fmt.Errorf("store check %s: no usable AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE): %w", s, err)
	}
	err = s.do(ctx, opCheck, "HeadBucket", "", func(ctx context.Context) error {
		_, err := s.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(s.cfg.bucket)})
		return err
	})
	if err != nil {
		return fmt.Errorf("store check %s: %w", s, s.explainBucketError(err))
	}
	probe := fmt.Sprintf("%s.probe.%016x", s.blocksPrefix(), rand.Uint64())
	if err := s.putObject(ctx, opCheck, probe, []byte("datenlord store probe\n")); err != nil {
		return fmt.Errorf("store check %s: not writable: %w", s, err)
	}
	if err := s.deleteObject(ctx, opCheck, probe); err != nil {
		return fmt.Errorf("store check %s: remove probe: %w", s, err)
	}
	return nil
}

// explainBucketError turns a failed HeadBucket into an error saying what
// is wrong, wrapping the SDK's.
func (s *S3Store) explainBucketError(err error) error {
	endpoint := s.cfg.endpoint
	if endpoint == "" {
		endpoint = "AWS S3"
	}
	code, status := errorCode(err), httpStatus(err)
	switch {
	case code == "NoSuchBucket" || status == 404:
		return fmt.Errorf("bucket %q does not exist at %s: %w", s.cfg.bucket, endpoint, err)
	case code == "AccessDenied" || code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch" || status == 403:
		return fmt.Errorf("access denied to bucket %q at %s (check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY): %w", s.cfg.bucket, endpoint, err)
	case status == 301 || code == "PermanentRedirect" || code == "AuthorizationHeaderMalformed":
		return fmt.Errorf("bucket %q is in another region (set ?region= or AWS_REGION): %w", s.cfg.bucket, err)
	case isUnreachable(err):
		return fmt.Errorf("cannot reach endpoint %s: %w", endpoint, err)
	}
	return err
}

// Close closes idle connections; later calls fail.
func (s *S3Store) Close() error {
	if !s.markClosed() {
		return nil
	}
	s.transport.CloseIdleConnections()
	return nil
}

func maxKeys(n int32) *int32 {
	if n <= 0 {
		return nil
	}
	return aws.Int32(n)
}
