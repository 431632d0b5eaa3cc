// Package fs serves the datenlord namespace as a POSIX file system through
// FUSE (hanwen/go-fuse/v2, raw protocol API).
package fs

import (
	"context"
	"log/slog"
	"time"

	"github.com/datenlord/datenlord-go/cache"
	"github.com/datenlord/datenlord-go/meta"
	"github.com/datenlord/datenlord-go/store"
)

// Config configures a mount.
type Config struct {
	Mountpoint string
	BlockSize  int
	// DirtyLimit bounds the bytes of unflushed writes on this node; a
	// writer that would exceed it flushes first (back-pressure).
	DirtyLimit   int64
	AttrTimeout  time.Duration
	EntryTimeout time.Duration
	Logger       *slog.Logger
	Debug        bool
}

// FS is a mounted file system.
type FS struct{}

// Mount mounts the file system at cfg.Mountpoint and serves it until
// Unmount. It returns once the mount is ready.
func Mount(ctx context.Context, cfg Config, md *meta.Service, c *cache.Cache, st store.Store) (*FS, error) {
	panic("not implemented")
}

// Unmount flushes every dirty file, unmounts and waits for the server to
// stop.
func (f *FS) Unmount(ctx context.Context) error { panic("not implemented") }

// Wait blocks until the file system is unmounted (also from outside, by
// umount(8)).
func (f *FS) Wait() { panic("not implemented") }
