// Package store is the persistence layer: immutable blocks, written once
// under a unique id and read back by range. Backends: a local directory
// (file://) and S3 or an S3-compatible server (s3://). Open picks one by
// URL; storetest is the conformance suite both pass, and s3test runs a
// real S3 server (versitygw) for tests.
//
// # Local directory
//
// LocalStore keeps block id in <root>/blocks/<xx>/<id> (id as 16 hex
// digits, xx its last two, so no directory holds more than 1/256 of the
// blocks). Put writes a temporary file beside the block, fsyncs it, renames
// it into place and fsyncs the directory: a block is durable when Put
// returns and never visible half written. Temporary files left by a crash
// are invisible to List and removed by Open after an hour (Sweep). All file
// I/O goes through a small internal seam (pread/pwrite today, io_uring
// later) that tests wrap to inject errors and record the fsync order.
//
// # S3
//
// S3Store keeps block id in the object <prefix>/blocks/<id> (id as 16 hex
// digits). Put is one PutObject, or a multipart upload (aborted on
// failure) for blocks larger than the part size; S3 makes an object
// visible only whole and durable when the request returns. ReadAt is one
// ranged GET. All requests of a store share a concurrency bound; every
// attempt has a timeout, and throttling (503 SlowDown), 5xx answers,
// timeouts and connection errors are retried with exponential back-off
// and full jitter up to a number of attempts, after which the error names
// the request, the key, the attempts and the last cause. See Open for the
// URL parameters.
//
// # Errors
//
// Errors carry the operation, the block id and the path, and wrap the
// system error, so errors.Is(err, syscall.ENOSPC) (or EROFS, EACCES) works.
// S3 errors carry the request and the object key and wrap the SDK's error
// (errors.As to smithy.APIError gives the S3 error code). A missing block
// wraps ErrNotFound.
//
// # Metrics
//
// With Options.Registerer set: datenlord_store_requests_total{op,outcome}
// (op put, get, delete, list, and check for S3; outcome ok, error,
// not_found) and datenlord_store_request_duration_seconds{op}; the S3
// backend adds datenlord_store_retries_total{op}, the requests it tried
// again.
package store

import (
	"context"
	"errors"
)

// ErrNotFound is returned (wrapped) when a block does not exist.
var ErrNotFound = errors.New("block not found")

// Store holds immutable blocks. Implementations are safe for concurrent use.
type Store interface {
	// Put writes a block. When Put returns nil the block is durable; a
	// crash during Put leaves either no block or the whole block, never a
	// partial one. Writing an id twice is a caller bug (ids are unique).
	Put(ctx context.Context, id uint64, data []byte) error
	// ReadAt reads up to len(dst) bytes of block id starting at off. It
	// returns the bytes read; a short count with a nil error means the block
	// ends before off+len(dst). A missing block is ErrNotFound.
	ReadAt(ctx context.Context, id uint64, off int64, dst []byte) (int, error)
	// Delete removes a block. Deleting a missing block is not an error.
	Delete(ctx context.Context, id uint64) error
	// List calls fn for every block id in the store, in no set order.
	List(ctx context.Context, fn func(id uint64) error) error
	// Check verifies the store is reachable and writable (it writes and
	// removes a probe object), for a clear error at start-up.
	Check(ctx context.Context) error
	// String describes the store for logs (the URL, without secrets).
	String() string
	// Close releases resources.
	Close() error
}
