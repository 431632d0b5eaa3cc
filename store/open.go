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
	// and request latency metrics.
	Registerer prometheus.Registerer
	// Logger receives structured logs (nil: slog.Default()).
	Logger *slog.Logger
}

// Open opens the store named by rawURL: file:///abs/path for a local
// directory.
//
// For file:// the directory is created (mode 0700) if missing, and
// temporary files left by a crashed Put that are older than an hour are
// removed (see LocalStore.Sweep). s3:// is recognised but not supported yet.
func Open(ctx context.Context, rawURL string, opts Options) (Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store open: %w", err)
	}
	if rawURL == "" {
		return nil, fmt.Errorf("store open: empty URL (want file:///abs/path)")
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
		return nil, fmt.Errorf("store open %q: the s3 backend is not supported yet (use file:///abs/path)", u.Redacted())
	case "":
		return nil, fmt.Errorf("store open %q: missing scheme (want file:///abs/path)", u.Redacted())
	default:
		return nil, fmt.Errorf("store open %q: unknown scheme %q (want file:///abs/path)", u.Redacted(), u.Scheme)
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
