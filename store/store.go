// Package store is the persistence layer: immutable blocks, written once
// under a unique id and read back by range. Backends: a local directory
// (file://) and, in a later issue, S3 (s3://).
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
// # Errors
//
// Errors carry the operation, the block id and the path, and wrap the
// system error, so errors.Is(err, syscall.ENOSPC) (or EROFS, EACCES) works.
// A missing block wraps ErrNotFound.
//
// # Metrics
//
// With Options.Registerer set: datenlord_store_requests_total{op,outcome}
// (op put, get, delete, list; outcome ok, error, not_found) and
// datenlord_store_request_duration_seconds{op}.
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
