package tcpfallback

import (
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the transport's collectors. Without a Registerer they exist
// unregistered, so the code needs no nil checks.
type metrics struct {
	requests     *prometheus.CounterVec
	duration     *prometheus.HistogramVec
	authFailures prometheus.Counter
	frameErrors  *prometheus.CounterVec
	conns        *prometheus.GaugeVec
}

func newMetrics(r prometheus.Registerer) *metrics {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "datenlord_transport_requests_total",
			Help: "Outgoing transport requests by op and outcome (ok, remote_error, canceled, deadline, unavailable, conn_lost, closed).",
		}, []string{"op", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "datenlord_transport_request_duration_seconds",
			Help:    "Outgoing transport request latency by peer address.",
			Buckets: prometheus.ExponentialBuckets(10e-6, 2, 20),
		}, []string{"peer"}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "datenlord_transport_auth_failures_total",
			Help: "Incoming connections that failed the handshake.",
		}),
		frameErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "datenlord_transport_frame_errors_total",
			Help: "Connections dropped for a malformed frame, by reason.",
		}, []string{"reason"}),
		conns: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "datenlord_transport_open_connections",
			Help: "Open authenticated transport connections by direction (in, out) and kind.",
		}, []string{"direction", "kind"}),
	}
	if r != nil {
		m.requests = register(r, m.requests)
		m.duration = register(r, m.duration)
		m.authFailures = register(r, m.authFailures)
		m.frameErrors = register(r, m.frameErrors)
		m.conns = register(r, m.conns)
	}
	return m
}

// register registers c, or returns the identical collector registered
// before (several transports in one process share a registry).
func register[T prometheus.Collector](r prometheus.Registerer, c T) T {
	if err := r.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(T); ok {
				return existing
			}
		}
	}
	return c
}

// logLimiter caps warnings caused by network input, so a hostile or broken
// peer cannot flood the log.
type logLimiter struct {
	mu         sync.Mutex
	window     time.Time
	n          int
	suppressed int
}

const logsPerSecond = 10

// warn logs msg unless too many were logged this second; the count of
// suppressed lines rides on the next logged one.
func (l *logLimiter) warn(log *slog.Logger, msg string, args ...any) {
	l.mu.Lock()
	now := time.Now()
	if now.Sub(l.window) >= time.Second {
		l.window, l.n = now, 0
	}
	if l.n >= logsPerSecond {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	l.n++
	if l.suppressed > 0 {
		args = append(args, "suppressed", l.suppressed)
		l.suppressed = 0
	}
	l.mu.Unlock()
	log.Warn(msg, args...)
}
