package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spf13/pflag"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/fs"
	"github.com/datenlord/datenlord-go/internal/clientauth"
	"github.com/datenlord/datenlord-go/meta"
	"github.com/datenlord/datenlord-go/store"
	"github.com/datenlord/datenlord-go/tcpfallback"
)

// ifaceConfig configures the client-facing interfaces beside the FUSE
// mount: the S3 gateway (serve_s3.go) and the etcd-compatible KV server
// (serve_kv.go). Both share the client credentials and the TLS options.
type ifaceConfig struct {
	// S3Listen is --s3-listen, the S3 gateway's address (empty: off).
	S3Listen string
	// KVListen is --kv-listen, the KV server's address (empty: off).
	KVListen string
	// CredentialsFile is --client-credentials-file.
	CredentialsFile string
	// TLSCertFile and TLSKeyFile are --tls-cert-file and --tls-key-file.
	TLSCertFile string
	TLSKeyFile  string

	// Credentials are the loaded client credentials (nil: none given).
	Credentials *clientauth.Credentials
	// TLS is the listeners' TLS configuration (nil: plain TCP).
	TLS *tls.Config
}

// addInterfaceFlags defines the interface flags on fs, bound to c.
func addInterfaceFlags(fs *pflag.FlagSet, c *ifaceConfig) {
	fs.StringVar(&c.S3Listen, "s3-listen", "", "address of the S3 gateway, e.g. 127.0.0.1:9000: buckets are the top-level directories of the file system, objects its files (needs --client-credentials-file; empty: off)")
	fs.StringVar(&c.KVListen, "kv-listen", "", "address of the KV server speaking etcd's v3 gRPC API, e.g. 127.0.0.1:2379 (empty: off)")
	fs.StringVar(&c.CredentialsFile, "client-credentials-file", "", "file of \"ACCESS_KEY SECRET\" lines (mode 600): the S3 gateway checks AWS Signature V4 against them, and the KV server, when given, requires them as etcd user and password")
	fs.StringVar(&c.TLSCertFile, "tls-cert-file", "", "PEM certificate (chain) of the S3 and KV listeners (with --tls-key-file; empty: plain TCP)")
	fs.StringVar(&c.TLSKeyFile, "tls-key-file", "", "PEM private key of the S3 and KV listeners (with --tls-cert-file)")
}

// validate checks the interface flags and loads the credentials and TLS
// key pair.
func (c *ifaceConfig) validate() error {
	for _, l := range []struct{ flag, addr string }{{"--s3-listen", c.S3Listen}, {"--kv-listen", c.KVListen}} {
		if l.addr == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(l.addr); err != nil {
			return fmt.Errorf("%s %q: want host:port: %w", l.flag, l.addr, err)
		}
	}
	if c.S3Listen != "" && c.S3Listen == c.KVListen {
		return fmt.Errorf("--s3-listen and --kv-listen are both %s", c.S3Listen)
	}
	if c.CredentialsFile != "" {
		creds, err := clientauth.LoadFile(c.CredentialsFile)
		if err != nil {
			return fmt.Errorf("--client-credentials-file: %w", err)
		}
		c.Credentials = creds
	}
	if c.S3Listen != "" && c.Credentials == nil {
		return errors.New("--s3-listen needs --client-credentials-file: the gateway signs nothing anonymously")
	}
	tc, err := clientauth.ServerTLS(c.TLSCertFile, c.TLSKeyFile)
	if err != nil {
		return fmt.Errorf("--tls-cert-file/--tls-key-file: %w", err)
	}
	if tc != nil && c.S3Listen == "" && c.KVListen == "" {
		return errors.New("--tls-cert-file and --tls-key-file secure --s3-listen and --kv-listen; neither is set")
	}
	c.TLS = tc
	return nil
}

// ifaceDeps are the parts of a running node the interfaces serve from.
type ifaceDeps struct {
	Meta  *meta.Service
	Cache *cache.Cache
	Store store.Store
	FS    *fs.FS
	// Transport is the node transport; nil on a single node.
	Transport  *tcpfallback.Transport
	NodeID     string
	Registerer prometheus.Registerer // nil: no metrics
	Logger     *slog.Logger
}

// startInterfaces starts the configured client interfaces and returns a
// function that stops them (new requests are refused, running ones finish).
func startInterfaces(ctx context.Context, c ifaceConfig, d ifaceDeps) (stop func() error, err error) {
	var stops []func() error
	stopAll := func() error {
		var errs []error
		for i := len(stops) - 1; i >= 0; i-- {
			errs = append(errs, stops[i]())
		}
		return errors.Join(errs...)
	}
	if c.KVListen != "" {
		s, err := startKV(ctx, c, d)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("start the KV server on %s: %w", c.KVListen, err), stopAll())
		}
		stops = append(stops, s)
	}
	if c.S3Listen != "" {
		s, err := startS3(ctx, c, d)
		if err != nil {
			return nil, errors.Join(fmt.Errorf("start the S3 gateway on %s: %w", c.S3Listen, err), stopAll())
		}
		stops = append(stops, s)
	}
	return stopAll, nil
}
