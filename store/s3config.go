package store

import (
	"fmt"
	"net/url"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Defaults and limits of the s3:// query parameters.
const (
	// DefaultS3Concurrency bounds the requests one S3 store has in flight.
	DefaultS3Concurrency = 32
	// DefaultS3PartSize is the multipart threshold and part size.
	DefaultS3PartSize = 16 << 20
	// MinS3PartSize is S3's own minimum size of a multipart part (all but
	// the last); S3Options.MinPartSize lowers it for tests.
	MinS3PartSize = 5 << 20
	// MaxS3PartSize is S3's maximum part (and single PutObject) size.
	MaxS3PartSize = 5 << 30
	// DefaultS3Timeout bounds one attempt of one request.
	DefaultS3Timeout = 30 * time.Second
	// DefaultS3Attempts is how many times a request is tried before the
	// store gives up (the first try included).
	DefaultS3Attempts = 5
	// DefaultS3Region is used when neither the URL nor AWS_REGION names one.
	DefaultS3Region = "us-east-1"

	maxS3Concurrency = 4096
	maxS3Attempts    = 100
)

// s3Params lists the accepted query parameters of an s3:// URL, for
// errors.
const s3Params = "concurrency, endpoint, part-size, region, retries, timeout"

// s3Config is a parsed s3:// URL.
type s3Config struct {
	bucket      string
	prefix      string // no leading or trailing slash; may be empty
	endpoint    string // "" for AWS itself
	region      string // "" for the SDK's default (AWS_REGION), then us-east-1
	concurrency int
	partSize    int64
	timeout     time.Duration
	attempts    int
}

// parseS3URL parses s3://BUCKET[/PREFIX][?endpoint=URL&region=R&concurrency=N&part-size=SIZE&timeout=D&retries=N].
// minPartSize is the smallest part-size accepted (0: MinS3PartSize).
func parseS3URL(u *url.URL, minPartSize int64) (s3Config, error) {
	c := s3Config{
		concurrency: DefaultS3Concurrency,
		partSize:    DefaultS3PartSize,
		timeout:     DefaultS3Timeout,
		attempts:    DefaultS3Attempts,
	}
	if minPartSize <= 0 {
		minPartSize = MinS3PartSize
	}
	if u.Opaque != "" {
		return c, fmt.Errorf("want s3://BUCKET/PREFIX, not s3:%s", u.Opaque)
	}
	if u.User != nil {
		return c, fmt.Errorf("credentials in the URL are not accepted: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile) instead")
	}
	if u.Fragment != "" {
		return c, fmt.Errorf("unexpected fragment #%s", u.Fragment)
	}
	c.bucket = u.Host
	if c.bucket == "" {
		return c, fmt.Errorf("missing bucket name: want s3://BUCKET/PREFIX")
	}
	if err := checkBucketName(c.bucket); err != nil {
		return c, err
	}
	prefix, err := cleanPrefix(u.Path)
	if err != nil {
		return c, err
	}
	c.prefix = prefix

	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return c, fmt.Errorf("bad query %q: %w", u.RawQuery, err)
	}
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		vs := q[k]
		if len(vs) != 1 {
			return c, fmt.Errorf("query parameter %q given %d times", k, len(vs))
		}
		v := vs[0]
		switch k {
		case "endpoint":
			if c.endpoint, err = checkEndpoint(v); err != nil {
				return c, err
			}
		case "region":
			if v == "" || strings.ContainsAny(v, " /?#") {
				return c, fmt.Errorf("bad region %q", v)
			}
			c.region = v
		case "concurrency":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxS3Concurrency {
				return c, fmt.Errorf("bad concurrency %q: want an integer from 1 to %d", v, maxS3Concurrency)
			}
			c.concurrency = n
		case "part-size":
			n, err := parseSize(v)
			if err != nil {
				return c, fmt.Errorf("bad part-size %q: %w", v, err)
			}
			if n < minPartSize || n > MaxS3PartSize {
				return c, fmt.Errorf("bad part-size %q: want %d to %d bytes (5MiB to 5GiB)", v, minPartSize, int64(MaxS3PartSize))
			}
			c.partSize = n
		case "timeout":
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 {
				return c, fmt.Errorf("bad timeout %q: want a positive duration such as 30s", v)
			}
			c.timeout = d
		case "retries":
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > maxS3Attempts {
				return c, fmt.Errorf("bad retries %q: want the maximum number of attempts, 1 to %d", v, maxS3Attempts)
			}
			c.attempts = n
		default:
			return c, fmt.Errorf("unknown query parameter %q (accepted: %s)", k, s3Params)
		}
	}
	return c, nil
}

// checkBucketName rejects names S3 cannot address (a loose check: S3
// compatible servers differ on the finer rules).
func checkBucketName(b string) error {
	if len(b) < 3 || len(b) > 63 {
		return fmt.Errorf("bad bucket name %q: want 3 to 63 characters", b)
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || 'A' <= c && c <= 'Z') {
			return fmt.Errorf("bad bucket name %q: character %q (a port? put the server in ?endpoint=)", b, c)
		}
	}
	return nil
}

// cleanPrefix turns the URL path into a key prefix without leading or
// trailing slashes, refusing empty, "." and ".." segments.
func cleanPrefix(p string) (string, error) {
	p = strings.Trim(p, "/")
	if p == "" {
		return "", nil
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return "", fmt.Errorf("bad prefix %q: empty, . or .. segment", p)
		}
	}
	if path.Clean(p) != p {
		return "", fmt.Errorf("bad prefix %q", p)
	}
	return p, nil
}

// checkEndpoint validates an endpoint=URL parameter.
func checkEndpoint(v string) (string, error) {
	e, err := url.Parse(v)
	if err != nil {
		return "", fmt.Errorf("bad endpoint URL %q: %w", v, err)
	}
	if e.Scheme != "http" && e.Scheme != "https" {
		return "", fmt.Errorf("bad endpoint URL %q: want http://HOST:PORT or https://HOST", v)
	}
	if e.Host == "" || e.Hostname() == "" {
		return "", fmt.Errorf("bad endpoint URL %q: missing host", v)
	}
	if port := e.Port(); port != "" {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("bad endpoint URL %q: bad port %q", v, port)
		}
	}
	if e.User != nil || e.RawQuery != "" || e.Fragment != "" {
		return "", fmt.Errorf("bad endpoint URL %q: want only scheme, host, port and path", v)
	}
	return strings.TrimRight(e.String(), "/"), nil
}

// parseSize parses a byte count with an optional unit: 8388608, 8MiB,
// 8M (binary units; B, K/KiB, M/MiB, G/GiB).
func parseSize(v string) (int64, error) {
	i := 0
	for i < len(v) && '0' <= v[i] && v[i] <= '9' {
		i++
	}
	if i == 0 {
		return 0, fmt.Errorf("want a size such as 16MiB")
	}
	n, err := strconv.ParseInt(v[:i], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("want a size such as 16MiB: %w", err)
	}
	var shift uint
	switch strings.ToLower(v[i:]) {
	case "", "b":
	case "k", "kib", "kb":
		shift = 10
	case "m", "mib", "mb":
		shift = 20
	case "g", "gib", "gb":
		shift = 30
	default:
		return 0, fmt.Errorf("unknown unit %q (want B, KiB, MiB or GiB)", v[i:])
	}
	if n > (1<<62)>>shift {
		return 0, fmt.Errorf("too large")
	}
	return n << shift, nil
}

// String renders the configuration as a canonical s3:// URL (it never
// holds credentials).
func (c s3Config) String() string {
	u := url.URL{Scheme: "s3", Host: c.bucket, Path: "/" + c.prefix}
	q := url.Values{}
	if c.endpoint != "" {
		q.Set("endpoint", c.endpoint)
	}
	if c.region != "" {
		q.Set("region", c.region)
	}
	u.RawQuery = q.Encode()
	return u.String()
}
