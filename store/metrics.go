package store

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Operation and outcome label values of the store metrics (a public
// contract: dashboards and alerts select on them).
const (
	opPut    = "put"
	opGet    = "get"
	opDelete = "delete"
	opList   = "list"

	outcomeOK       = "ok"
	outcomeError    = "error"
	outcomeNotFound = "not_found"
)

// metrics are the store's request counters and latency histograms. A nil
// *metrics records nothing.
type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "datenlord_store_requests_total",
		Help: "Persistence store requests by operation and outcome.",
	}, []string{"op", "outcome"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "datenlord_store_request_duration_seconds",
		Help:    "Persistence store request latency by operation.",
		Buckets: prometheus.ExponentialBuckets(50e-6, 4, 10), // 50µs .. ~13s
	}, []string{"op"})
	var err error
	if requests, err = register(reg, requests); err != nil {
		return nil, err
	}
	if duration, err = register(reg, duration); err != nil {
		return nil, err
	}
	return &metrics{requests: requests, duration: duration}, nil
}

// register registers c, or returns the collector already registered under
// the same description (several stores may share one registry).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (C, error) {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing, nil
			}
		}
		return c, err
	}
	return c, nil
}

// observe records one request of op that started at start and ended with
// err.
func (m *metrics) observe(op string, start time.Time, err error) {
	if m == nil {
		return
	}
	outcome := outcomeOK
	switch {
	case err == nil:
	case errors.Is(err, ErrNotFound):
		outcome = outcomeNotFound
	default:
		outcome = outcomeError
	}
	m.requests.WithLabelValues(op, outcome).Inc()
	m.duration.WithLabelValues(op).Observe(time.Since(start).Seconds())
}
