package main

import (
	"context"
	"errors"
)

// startKV starts the KV server on c.KVListen.
func startKV(ctx context.Context, c ifaceConfig, d ifaceDeps) (stop func() error, err error) {
	return nil, errors.New("the KV server is not built yet")
}
