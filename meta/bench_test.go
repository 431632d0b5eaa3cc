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
	b.SetParallelism(8)
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

// The cluster benchmarks run a 3-voter cluster over the node transport on
// loopback; compare them with BenchmarkCreate and BenchmarkGetAttr (one
// node). "Follower" issues the calls on a follower: writes are forwarded
// and reads wait for a ReadIndex from the leader.

func benchClusterNode(b *testing.B, follower bool) *Service {
	c := newTestCluster(b, 3)
	if follower {
		return c.followers()[0].svc
	}
	return c.leader().svc
}

func benchClusterCreate(b *testing.B, follower bool) {
	s := benchClusterNode(b, follower)
	ctx := context.Background()
	var n atomic.Uint64
	b.SetParallelism(8)
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

func benchClusterGetAttr(b *testing.B, follower bool) {
	s := benchClusterNode(b, follower)
	ctx := context.Background()
	f := mk(b, s, RootIno, "f", modeFile)
	b.SetParallelism(8)
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

func BenchmarkClusterCreateLeader(b *testing.B)    { benchClusterCreate(b, false) }
func BenchmarkClusterCreateFollower(b *testing.B)  { benchClusterCreate(b, true) }
func BenchmarkClusterGetAttrLeader(b *testing.B)   { benchClusterGetAttr(b, false) }
func BenchmarkClusterGetAttrFollower(b *testing.B) { benchClusterGetAttr(b, true) }
