package main

import (
	"context"
	"errors"
	"time"

	"github.com/datenlord/datenlord-go/s3gw"
)

// s3ShutdownTimeout bounds how long stopping the gateway waits for the
// requests in flight.
const s3ShutdownTimeout = 30 * time.Second

// startS3 starts the S3 gateway on c.S3Listen.
func startS3(ctx context.Context, c ifaceConfig, d ifaceDeps) (stop func() error, err error) {
	if c.Credentials == nil {
		return nil, errors.New("the S3 gateway needs client credentials")
	}
	g, err := s3gw.New(ctx, s3gw.Config{
		Files:      d.FS.Files(),
		Secrets:    c.Credentials.Secret,
		NodeID:     d.NodeID,
		Registerer: d.Registerer,
		Logger:     d.Logger.With("component", "s3gw"),
	})
	if err != nil {
		return nil, err
	}
	srv, err := s3gw.Serve(c.S3Listen, c.TLS, g)
	if err != nil {
		return nil, err
	}
	d.Logger.Info("s3 gateway: listening", "addr", srv.Addr(), "tls", c.TLS != nil)
	return func() error {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s3ShutdownTimeout)
		defer cancel()
		return srv.Shutdown(sctx)
	}, nil
}
