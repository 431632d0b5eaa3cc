package cache

import "github.com/prometheus/client_golang/prometheus"

// diskMetrics are the collectors only the disk tier has, labelled by tier
// like the shared ones in metrics.go.
type diskMetrics struct {
	readDuration *prometheus.HistogramVec
	writeDrops   *prometheus.CounterVec
	writeErrors  *prometheus.CounterVec
}

// diskTierMetrics are one tier's resolved children.
type diskTierMetrics struct {
	readDuration prometheus.Observer
	writeDrops   prometheus.Counter
	writeErrors  prometheus.Counter
}

func newDiskMetrics(reg prometheus.Registerer) (*diskMetrics, error) {
	tier := []string{"tier"}
	m := &diskMetrics{
		readDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "datenlord_cache_read_duration_seconds",
			Help:    "Latency of a cache tier's page reads that go to its device (disk: one slot read).",
			Buckets: prometheus.ExponentialBuckets(10e-6, 2, 16), // 10µs .. ~330ms
		}, tier),
		writeDrops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "datenlord_cache_write_drops_total",
			Help: "Pages a cache tier declined to write because its write queue was full or no slot was free.",
		}, tier),
		writeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "datenlord_cache_write_errors_total",
			Help: "Page writes a cache tier failed (the page was dropped).",
		}, tier),
	}
	if reg == nil {
		return m, nil
	}
	var err error
	if m.readDuration, err = register(reg, m.readDuration); err != nil {
		return nil, err
	}
	if m.writeDrops, err = register(reg, m.writeDrops); err != nil {
		return nil, err
	}
	if m.writeErrors, err = register(reg, m.writeErrors); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *diskMetrics) forTier(name string) diskTierMetrics {
	return diskTierMetrics{
		readDuration: m.readDuration.WithLabelValues(name),
		writeDrops:   m.writeDrops.WithLabelValues(name),
		writeErrors:  m.writeErrors.WithLabelValues(name),
	}
}
