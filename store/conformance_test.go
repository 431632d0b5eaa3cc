package store_test

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/datenlord/datenlord-go/store"
	"github.com/datenlord/datenlord-go/store/s3test"
	"github.com/datenlord/datenlord-go/store/storetest"
)

func TestLocalConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.Open(context.Background(), "file://"+t.TempDir(), store.Options{})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}

func TestS3Conformance(t *testing.T) {
	srv := s3test.Start(t)
	var n atomic.Int64
	storetest.Run(t, func(t *testing.T) store.Store {
		// A fresh prefix per case: an empty store in the shared bucket.
		prefix := fmt.Sprintf("conformance/%d-%s", n.Add(1), strings.ReplaceAll(t.Name(), "/", "-"))
		s, err := store.Open(context.Background(), srv.URL(prefix), store.Options{
			S3: store.S3Options{AccessKeyID: srv.AccessKey, SecretAccessKey: srv.SecretKey},
		})
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return s
	})
}
