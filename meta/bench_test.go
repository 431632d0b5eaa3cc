package meta

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
)

func BenchmarkCreate(b *testing.B) {
	s := openTest(b, b.TempDir())
	ctx := context.Background()
	var n atomic.Uint64
	// Many FUSE requests are in flight at once; Raft batches their log
	// writes, which is what this measures.
	b.SetParallelism(8)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			name := fmt.Sprintf("f%d", n.Add(1))
			if _, err := s.Create(ctx, CreateRequest{Parent: RootIno, Name: name, Mode: modeFile, Now: 1}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkGetAttr(b *testing.B) {
	s := openTest(b, b.TempDir())
	ctx := context.Background()
	f := mk(b, s, RootIno, "f", modeFile)
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.GetAttr(ctx, f.Ino); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
