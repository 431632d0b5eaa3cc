package meta

import (
	"context"
	"errors"
	"log/slog"
	"syscall"
	"testing"
	"time"
)

// testConfig returns a config for a fast single-voter service in dir.
func testConfig(dir string) Config {
	return Config{
		Dir:             dir,
		ElectionTimeout: 50 * time.Millisecond,
		BlockSize:       4096,
		Logger:          slog.New(slog.DiscardHandler),
	}
}

// openTest opens a service in dir and closes it when the test ends.
func openTest(t testing.TB, dir string) *Service {
	t.Helper()
	return openTestConfig(t, testConfig(dir))
}

func openTestConfig(t testing.TB, cfg Config) *Service {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := Open(ctx, cfg)
	if err != nil {
		t.Fatalf("Open(%s): %v", cfg.Dir, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// mk creates an inode and fails the test on error.
func mk(t testing.TB, s *Service, parent Ino, name string, mode uint32) Attr {
	t.Helper()
	a, err := s.Create(context.Background(), CreateRequest{Parent: parent, Name: name, Mode: mode, Now: 100})
	if err != nil {
		t.Fatalf("Create(%d, %q): %v", parent, name, err)
	}
	return a
}

// attr reads attributes and fails the test on error.
func attr(t testing.TB, s *Service, ino Ino) Attr {
	t.Helper()
	a, err := s.GetAttr(context.Background(), ino)
	if err != nil {
		t.Fatalf("GetAttr(%d): %v", ino, err)
	}
	return a
}

// wantErrno fails unless err is want (nil for success).
func wantErrno(t testing.TB, what string, err error, want syscall.Errno) {
	t.Helper()
	if want == 0 {
		if err != nil {
			t.Fatalf("%s: unexpected error %v", what, err)
		}
		return
	}
	if !errors.Is(err, want) {
		t.Fatalf("%s: got error %v, want %v", what, err, want)
	}
}

const (
	modeFile = syscall.S_IFREG | 0o644
	modeDir  = syscall.S_IFDIR | 0o755
)
