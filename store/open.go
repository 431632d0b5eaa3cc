package store

import (
	"context"

	"github.com/prometheus/client_golang/prometheus"
)

// Options tune a store.
type Options struct {
	// Registerer, when set, receives datenlord_store_requests_total{op,outcome}
	// and request latency metrics.
	Registerer prometheus.Registerer
}

// Open opens the store named by rawURL: file:///abs/path for a local
// directory.
func Open(ctx context.Context, rawURL string, opts Options) (Store, error) {
	panic("not implemented")
}
