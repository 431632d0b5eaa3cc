package store

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"
)

// Options tune a store.
type Options struct {
	// Registerer, when set, receives datenlord_store_requests_total{op,outcome}
	// and request latency metrics (and, for S3, datenlord_store_retries_total{op}).
	Registerer prometheus.Registerer
	// Logger receives structured logs (nil: slog.Default()).
	Logger *slog.Logger
	// S3 tunes the s3:// backend (credentials, test limits); the zero
	// value takes everything from the URL and the environment.
	S3 S3Options
}

// Open opens the store named by rawURL: file:///abs/path for a local
// directory, or s3://BUCKET/PREFIX[?PARAMS] for an S3 bucket.
//
// For file:// the directory is created (mode 0700) if missing, and
// temporary files left by a crashed Put that are older than an hour are
// removed (see LocalStore.Sweep).
//
// For s3:// the query parameters are (all optional):
//
//	endpoint=URL     an S3-compatible server (http://127.0.0.1:7070); path-style addressing
//	region=R         the bucket's region (default: AWS_REGION, then us-east-1)
//	concurrency=N    requests in flight at once (default 32)
//	part-size=SIZE   multipart threshold and part size (default 16MiB, min 5MiB)
//	timeout=D        limit on one attempt of one request (default 30s)
//	retries=N        attempts per request, the first included (default 5)
//
// Credentials come from the AWS SDK's default chain (AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY, a profile, an instance role) unless opts.S3 sets
// them. Open does no I/O for s3://; Check reaches the bucket.
func Open(ctx context.Context, rawURL string, opts Options) (Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store open: %w", err)
	}
	if rawURL == "" {
		return nil, fmt.Errorf("store open: empty URL (want file:///abs/path or s3://BUCKET/PREFIX)")
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("store open: parse URL: %w", err)
	}
	switch u.Scheme {
	case "file":
		root, err := localPath(u)
		if err != nil {
			return nil, fmt.Errorf("store open %q: %w", u.Redacted(), err)
		}
		return openLocal(ctx, root, opts)
	case "s3":
		return openS3(ctx, u, opts)
	case "":
		return nil, fmt.Errorf("store open %q: missing scheme (want file:///abs/path or s3://BUCKET/PREFIX)", u.Redacted())
	default:
		return nil, fmt.Errorf("store open %q: unknown scheme %q (want file:///abs/path or s3://BUCKET/PREFIX)", u.Redacted(), u.Scheme)
	}
}

// localPath extracts the absolute directory of a file:// URL.
func localPath(u *url.URL) (string, error) {
	if u.Opaque != "" {
		return "", fmt.Errorf("relative path %q: want file:///abs/path", u.Opaque)
	}
	if u.Host != "" && u.Host != "localhost" {
		return "", fmt.Errorf("host %q in file URL (a relative path?): want file:///abs/path", u.Host)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("unexpected query or fragment: want file:///abs/path")
	}
	if u.Path == "" {
		return "", fmt.Errorf("empty path: want file:///abs/path")
	}
	if !filepath.IsAbs(u.Path) {
		return "", fmt.Errorf("relative path %q: want file:///abs/path", u.Path)
	}
	root := filepath.Clean(u.Path)
	if root == "/" {
		return "", fmt.Errorf("refusing to use / as the store directory")
	}
	return root, nil
}
