package store

import "github.com/prometheus/client_golang/prometheus"

// opCheck labels Check in the S3 store's metrics (the local store does
// not count its probe).
const opCheck = "check"

// newRetryCounter registers datenlord_store_retries_total{op}: S3 requests
// tried again after a retryable failure. nil reg: nil counter.
func newRetryCounter(reg prometheus.Registerer) (*prometheus.CounterVec, error) {
	if reg == nil {
		return nil, nil
	}
	return register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "datenlord_store_retries_total",
		Help: "Persistence store requests retried after a retryable failure (throttling, 5xx, timeouts, connection errors), by operation.",
	}, []string{"op"}))
}

// retried counts one retry of op.
func (s *S3Store) retried(op string) {
	if s.retries != nil {
		s.retries.WithLabelValues(op).Inc()
	}
}
