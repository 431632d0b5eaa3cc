package meta

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

// TestConcurrentCreate checks that concurrent applies are all applied once:
// distinct names all succeed, one contested name succeeds exactly once.
func TestConcurrentCreate(t *testing.T) {
	s := openTest(t, t.TempDir())
	ctx := context.Background()
	var wg sync.WaitGroup
	var won, lost atomic.Int32
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				if _, err := s.Create(ctx, CreateRequest{Parent: RootIno, Name: fmt.Sprintf("g%d-%d", g, i), Mode: modeFile}); err != nil {
					t.Error(err)
				}
			}
			_, err := s.Create(ctx, CreateRequest{Parent: RootIno, Name: "contested", Mode: modeFile})
			switch {
			case err == nil:
				won.Add(1)
			case errors.Is(err, syscall.EEXIST):
				lost.Add(1)
			default:
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if won.Load() != 1 || lost.Load() != 7 {
		t.Fatalf("contested create: %d won, %d lost", won.Load(), lost.Load())
	}
	ents, _ := s.ReadDir(ctx, RootIno, "", 0)
	st, _ := s.StatFS(ctx)
	if len(ents) != 161 || st.Inodes != 162 {
		t.Fatalf("%d entries, %d inodes", len(ents), st.Inodes)
	}
}
