package main

import (
	"context"
	"errors"

	"github.com/datenlord/datenlord-go/kv"
)

// startKV starts the KV server (etcd's v3 gRPC API, package kv) on
// c.KVListen, serving the KV machine that serve configured in the
// metadata service.
func startKV(ctx context.Context, c ifaceConfig, d ifaceDeps) (stop func() error, err error) {
	m, ok := d.Meta.KVMachine().(*kv.Machine)
	if !ok {
		return nil, errors.New("the metadata service has no KV machine")
	}
	cfg := kv.Config{
		Meta: d.Meta, Machine: m, Credentials: c.Credentials, TLS: c.TLS,
		Registerer: d.Registerer, Logger: d.Logger,
	}
	if d.Transport != nil {
		cfg.Transport = d.Transport
	}
	s, err := kv.New(cfg)
	if err != nil {
		return nil, err
	}
	if err := s.Serve(ctx, c.KVListen); err != nil {
		return nil, err
	}
	return s.Stop, nil
}
