package iouring

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
)

// ErrClosed is returned (wrapped) by requests made after Close.
var ErrClosed = errors.New("iouring: engine closed")

// Engine kinds accepted by Config.Kind.
const (
	KindAuto  = "auto"
	KindUring = "uring"
	KindPsync = "psync"
	// KindUringSQPoll is io_uring with a kernel thread polling the
	// submission queue (IORING_SETUP_SQPOLL): no system call per request
	// and no Go thread in the completion path, for a CPU kept busy while
	// I/O flows. Never chosen by "auto".
	KindUringSQPoll = "uring-sqpoll"
)

// Engine submits positioned block I/O. Implementations are safe for
// concurrent use by many goroutines.
type Engine interface {
	// Name is "uring", "uring-sqpoll" or "psync": the engine actually in use.
	Name() string
	// ReadAt reads len(buf) bytes of fd at off. It returns fewer bytes,
	// with a nil error, only at end of file.
	ReadAt(ctx context.Context, fd int, buf []byte, off int64) (int, error)
	// WriteAt writes buf to fd at off; a short count comes with an error.
	WriteAt(ctx context.Context, fd int, buf []byte, off int64) (int, error)
	// ReadFixed is ReadAt into buf, which must lie inside registered buffer
	// bufIndex (see RegisterBuffers).
	ReadFixed(ctx context.Context, fd int, buf []byte, off int64, bufIndex int) (int, error)
	// WriteFixed is WriteAt from buf, which must lie inside registered
	// buffer bufIndex.
	WriteFixed(ctx context.Context, fd int, buf []byte, off int64, bufIndex int) (int, error)
	// Fsync flushes fd's data and metadata to stable storage.
	Fsync(ctx context.Context, fd int) error
	// Fdatasync flushes fd's data (and the metadata needed to read it).
	Fdatasync(ctx context.Context, fd int) error
	// RegisterBuffers registers bufs as the engine's fixed buffers, indexed
	// from 0, replacing any registered before. The memory must stay mapped
	// until Close or the next RegisterBuffers; AllocAligned memory is the
	// intended kind. It may be called once before concurrent use only.
	RegisterBuffers(bufs [][]byte) error
	// Close waits for requests in flight and releases the engine. Later
	// requests fail with ErrClosed.
	Close() error
}

// Config selects and sizes an engine.
type Config struct {
	// Kind is "auto" (or empty), "uring", "uring-sqpoll" or "psync".
	Kind string
	// Entries is the io_uring queue size and so the bound on requests in
	// flight (default 256; rounded up to a power of two by the kernel).
	Entries uint32
	// Logger receives the fallback notice and errors (nil: slog.Default()).
	Logger *slog.Logger

	// setupErr, when set (tests only), makes io_uring setup fail with it,
	// to exercise the fallback on a kernel where io_uring works.
	setupErr error
	// noOwner (tests only) skips the SINGLE_ISSUER|DEFER_TASKRUN ring, to
	// exercise the fallback used on kernels before 6.1.
	noOwner bool
}

// DefaultEntries is the default Config.Entries.
const DefaultEntries = 256

// Open returns the engine cfg asks for. "auto" falls back to psync, with a
// logged reason, when io_uring cannot be set up; "uring" returns that
// error instead.
func Open(cfg Config) (Engine, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if cfg.Entries == 0 {
		cfg.Entries = DefaultEntries
	}
	switch cfg.Kind {
	case KindPsync:
		return newPsync(), nil
	case KindUring:
		e, err := newUring(cfg, log)
		if err != nil {
			return nil, fmt.Errorf("iouring: io engine %q unavailable: %w (use --io-engine=psync or auto)", KindUring, err)
		}
		return e, nil
	case KindUringSQPoll:
		if cfg.setupErr != nil {
			return nil, fmt.Errorf("iouring: io engine %q unavailable: io_uring_setup: %w", KindUringSQPoll, cfg.setupErr)
		}
		e, err := newSQPollUring(cfg, log)
		if err != nil {
			return nil, fmt.Errorf("iouring: io engine %q unavailable: %w (use --io-engine=uring, psync or auto)", KindUringSQPoll, err)
		}
		return e, nil
	case KindAuto, "":
		e, err := newUring(cfg, log)
		if err != nil {
			log.Warn("io_uring unavailable; using the psync engine (pread/pwrite), expect lower disk-tier throughput",
				"err", err, "hint", "check kernel.io_uring_disabled, seccomp profile, RLIMIT_MEMLOCK")
			return newPsync(), nil
		}
		return e, nil
	default:
		return nil, fmt.Errorf("iouring: unknown io engine %q (want %q, %q, %q or %q)", cfg.Kind, KindAuto, KindUring, KindUringSQPoll, KindPsync)
	}
}

// opError wraps an errno with the operation's context.
func opError(op string, fd int, off int64, n int, err error) error {
	return fmt.Errorf("iouring %s fd %d off %d len %d: %w", op, fd, off, n, err)
}
