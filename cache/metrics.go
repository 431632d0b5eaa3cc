package cache

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// prefetchTier is the tier label of the page reads that a block
// prefetch's buffer serves by lending it to a sequential reader
// (Cache.PinPrefetched). It is not a Tier: only hits are counted under it
// (a reader that finds no prefetch reads through the tiers, which count
// the read), so datenlord_cache_misses_total, _bytes, _evictions_total and
// _checksum_failures_total have no prefetch series. The backend read that
// filled the buffer is the store's GET, counted by the store.
const prefetchTier = "prefetch"

// metrics are the cache's collectors, labelled by tier. They exist even
// without a Registerer (unregistered), so the hot path never checks.
type metrics struct {
	hits             *prometheus.CounterVec
	misses           *prometheus.CounterVec
	evictions        *prometheus.CounterVec
	checksumFailures *prometheus.CounterVec
	bytes            *prometheus.GaugeVec
}

// tierMetrics are one tier's resolved children, so that recording a hit
// does not look up (or allocate) label values.
type tierMetrics struct {
	hits             prometheus.Counter
	misses           prometheus.Counter
	evictions        prometheus.Counter
	checksumFailures prometheus.Counter
	bytes            prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	tier := []string{"tier"}
	m := &metrics{
		hits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "datenlord_cache_hits_total", Help: "Page reads served by a cache tier.",
		}, tier),
		misses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "datenlord_cache_misses_total", Help: "Page reads a cache tier could not serve.",
		}, tier),
		evictions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "datenlord_cache_evictions_total", Help: "Pages evicted from a cache tier to make room.",
		}, tier),
		checksumFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "datenlord_cache_checksum_failures_total", Help: "Cached pages dropped because their checksum did not match.",
		}, tier),
		bytes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "datenlord_cache_bytes", Help: "Bytes of page data held by a cache tier.",
		}, tier),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.hits, err = register(reg, m.hits); err != nil {
		return nil, err
	}
	if m.misses, err = register(reg, m.misses); err != nil {
		return nil, err
	}
	if m.evictions, err = register(reg, m.evictions); err != nil {
		return nil, err
	}
	if m.checksumFailures, err = register(reg, m.checksumFailures); err != nil {
		return nil, err
	}
	if m.bytes, err = register(reg, m.bytes); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *metrics) forTier(name string) tierMetrics {
	return tierMetrics{
		hits:             m.hits.WithLabelValues(name),
		misses:           m.misses.WithLabelValues(name),
		evictions:        m.evictions.WithLabelValues(name),
		checksumFailures: m.checksumFailures.WithLabelValues(name),
		bytes:            m.bytes.WithLabelValues(name),
	}
}

// register registers c, or returns the collector already registered under
// the same description (several caches may share one registry).
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
