package kv

import (
	"context"
	"errors"
	"fmt"
	"path"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

type metrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	watchers prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "datenlord_kv_requests_total", Help: "KV server RPCs by method and gRPC status code.",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "datenlord_kv_request_duration_seconds", Help: "KV server RPC latency (streams: their lifetime).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"method"}),
		watchers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "datenlord_kv_watchers", Help: "Active KV watchers on this node.",
		}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.requests, m.duration, m.watchers} {
			if err := reg.Register(c); err != nil {
				var are prometheus.AlreadyRegisteredError
				if !errors.As(err, &are) {
					return nil, fmt.Errorf("kv: register metrics: %w", err)
				}
			}
		}
	}
	return m, nil
}

func (m *metrics) observe(fullMethod string, start time.Time, err error) {
	method := path.Base(fullMethod)
	m.requests.WithLabelValues(method, status.Code(err).String()).Inc()
	m.duration.WithLabelValues(method).Observe(time.Since(start).Seconds())
}

func (s *Server) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	err := s.authorize(ctx, info.FullMethod)
	var resp any
	if err == nil {
		resp, err = h(ctx, req)
	}
	s.metrics.observe(info.FullMethod, start, err)
	return resp, err
}

func (s *Server) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	start := time.Now()
	err := s.authorize(ss.Context(), info.FullMethod)
	if err == nil {
		err = h(srv, ss)
	}
	s.metrics.observe(info.FullMethod, start, err)
	return err
}
