package kv

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/protobuf/proto"

	"github.com/datenlord/datenlord-go/internal/clientauth"
	"github.com/datenlord/datenlord-go/meta"
)

// startSingle starts a single-node meta service with a KV machine and a
// KV server on a loopback port, and returns a connected client.
func startSingle(t testing.TB, creds *clientauth.Credentials, user, pass string) (*Server, *clientv3.Client) {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	m := NewMachine()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	svc, err := meta.Open(ctx, meta.Config{Dir: t.TempDir(), KV: m, Logger: logger, ElectionTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	s, err := New(Config{Meta: svc, Machine: m, Logger: logger, Credentials: creds, ProgressInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Serve(ctx, "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Stop() })
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{s.Addr()}, DialTimeout: 5 * time.Second, Username: user, Password: pass})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return s, cli
}

func kvs(rs []*mvccpb.KeyValue) string {
	var out []string
	for _, kv := range rs {
		out = append(out, fmt.Sprintf("%s=%s", kv.Key, kv.Value))
	}
	return strings.Join(out, ",")
}

func TestRangeSemantics(t *testing.T) {
	_, cli := startSingle(t, nil, "", "")
	ctx := context.Background()
	for _, k := range []string{"a", "a/1", "a/2", "b", "c"} {
		if _, err := cli.Put(ctx, k, "v"+k); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name  string
		key   string
		opts  []clientv3.OpOption
		want  string
		count int64
		more  bool
	}{
		{"single", "a", nil, "a=va", 1, false},
		{"missing", "zz", nil, "", 0, false},
		{"prefix", "a/", []clientv3.OpOption{clientv3.WithPrefix()}, "a/1=va/1,a/2=va/2", 2, false},
		{"from key", "b", []clientv3.OpOption{clientv3.WithFromKey()}, "b=vb,c=vc", 2, false},
		{"all", "\x00", []clientv3.OpOption{clientv3.WithFromKey()}, "a=va,a/1=va/1,a/2=va/2,b=vb,c=vc", 5, false},
		{"range", "a/1", []clientv3.OpOption{clientv3.WithRange("b")}, "a/1=va/1,a/2=va/2", 2, false},
		{"limit", "a", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithLimit(2)}, "a=va,a/1=va/1", 3, true},
		{"descend", "a", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend)}, "a/2=va/2,a/1=va/1,a=va", 3, false},
		{"keys only", "b", []clientv3.OpOption{clientv3.WithKeysOnly()}, "b=", 1, false},
		{"count only", "a", []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithCountOnly()}, "", 3, false},
		{"serializable", "c", []clientv3.OpOption{clientv3.WithSerializable()}, "c=vc", 1, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := cli.Get(ctx, c.key, c.opts...)
			if err != nil {
				t.Fatal(err)
			}
			if got := kvs(r.Kvs); got != c.want || r.Count != c.count || r.More != c.more {
				t.Fatalf("got %q count %d more %v; want %q %d %v", got, r.Count, r.More, c.want, c.count, c.more)
			}
		})
	}
}

func TestPutDeleteRevisions(t *testing.T) {
	_, cli := startSingle(t, nil, "", "")
	ctx := context.Background()
	p1, err := cli.Put(ctx, "k", "1")
	if err != nil {
		t.Fatal(err)
	}
	p2, err := cli.Put(ctx, "k", "2", clientv3.WithPrevKV())
	if err != nil {
		t.Fatal(err)
	}
	if p2.Header.Revision != p1.Header.Revision+1 || p2.PrevKv == nil || string(p2.PrevKv.Value) != "1" {
		t.Fatalf("second put: %v (first at %d)", p2, p1.Header.Revision)
	}
	g, err := cli.Get(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	kv := g.Kvs[0]
	if kv.CreateRevision != p1.Header.Revision || kv.ModRevision != p2.Header.Revision || kv.Version != 2 {
		t.Fatalf("record %v", kv)
	}
	// A read at the first revision sees the first value.
	old, err := cli.Get(ctx, "k", clientv3.WithRev(p1.Header.Revision))
	if err != nil || len(old.Kvs) != 1 || string(old.Kvs[0].Value) != "1" {
		t.Fatalf("get at rev %d: %v %v", p1.Header.Revision, old, err)
	}
	if _, err := cli.Get(ctx, "k", clientv3.WithRev(p2.Header.Revision+100)); err != rpctypes.ErrFutureRev {
		t.Fatalf("future rev: %v", err)
	}
	d, err := cli.Delete(ctx, "k", clientv3.WithPrevKV())
	if err != nil || d.Deleted != 1 || len(d.PrevKvs) != 1 {
		t.Fatalf("delete: %v %v", d, err)
	}
	d, err = cli.Delete(ctx, "k")
	if err != nil || d.Deleted != 0 || d.Header.Revision != p2.Header.Revision+1 {
		t.Fatalf("delete of nothing must not bump the revision: %v %v", d, err)
	}
	if _, err := cli.Put(ctx, "", "x"); err != rpctypes.ErrEmptyKey {
		t.Fatalf("empty key: %v", err)
	}
	p3, err := cli.Put(ctx, "k", "3")
	if err != nil {
		t.Fatal(err)
	}
	g, _ = cli.Get(ctx, "k")
	if g.Kvs[0].CreateRevision != p3.Header.Revision || g.Kvs[0].Version != 1 {
		t.Fatalf("recreated key: %v", g.Kvs[0])
	}
	if _, err := cli.Put(ctx, "k", "", clientv3.WithIgnoreValue()); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "nokey", "", clientv3.WithIgnoreValue()); err != rpctypes.ErrKeyNotFound {
		t.Fatalf("ignore value on a missing key: %v", err)
	}
}

func TestTxn(t *testing.T) {
	_, cli := startSingle(t, nil, "", "")
	ctx := context.Background()
	put, _ := cli.Put(ctx, "x", "1")
	cases := []struct {
		name string
		cmp  []clientv3.Cmp
		ok   bool
	}{
		{"value equal", []clientv3.Cmp{clientv3.Compare(clientv3.Value("x"), "=", "1")}, true},
		{"value not equal", []clientv3.Cmp{clientv3.Compare(clientv3.Value("x"), "!=", "1")}, false},
		{"value greater", []clientv3.Cmp{clientv3.Compare(clientv3.Value("x"), ">", "0")}, true},
		{"value less", []clientv3.Cmp{clientv3.Compare(clientv3.Value("x"), "<", "0")}, false},
		{"version", []clientv3.Cmp{clientv3.Compare(clientv3.Version("x"), "=", 1)}, true},
		{"missing version 0", []clientv3.Cmp{clientv3.Compare(clientv3.Version("nope"), "=", 0)}, true},
		{"missing value", []clientv3.Cmp{clientv3.Compare(clientv3.Value("nope"), "!=", "a")}, false},
		{"create", []clientv3.Cmp{clientv3.Compare(clientv3.CreateRevision("x"), "=", put.Header.Revision)}, true},
		{"mod", []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision("x"), "<", put.Header.Revision+1)}, true},
		{"lease", []clientv3.Cmp{clientv3.Compare(clientv3.LeaseValue("x"), "=", clientv3.NoLease)}, true},
		{"two, one false", []clientv3.Cmp{clientv3.Compare(clientv3.Version("x"), "=", 1), clientv3.Compare(clientv3.Value("x"), "=", "2")}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := cli.Txn(ctx).If(c.cmp...).Then(clientv3.OpGet("x")).Else(clientv3.OpGet("nope")).Commit()
			if err != nil {
				t.Fatal(err)
			}
			if r.Succeeded != c.ok {
				t.Fatalf("succeeded %v, want %v", r.Succeeded, c.ok)
			}
		})
	}
	// Writes in a branch share one revision; reads later in the branch
	// see them; nested transactions work.
	r, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Value("x"), "=", "1")).Then(
		clientv3.OpPut("y", "a"), clientv3.OpPut("z", "b"), clientv3.OpGet("y"),
		clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpDelete("x")}, nil),
	).Commit()
	if err != nil {
		t.Fatal(err)
	}
	if !r.Succeeded || len(r.Responses) != 4 || kvs(r.Responses[2].GetResponseRange().Kvs) != "y=a" {
		t.Fatalf("txn: %v", r)
	}
	rev := r.Header.Revision
	g, _ := cli.Get(ctx, "y")
	h, _ := cli.Get(ctx, "z")
	if g.Kvs[0].ModRevision != rev || h.Kvs[0].ModRevision != rev || rev != put.Header.Revision+1 {
		t.Fatalf("revisions: y %d z %d txn %d", g.Kvs[0].ModRevision, h.Kvs[0].ModRevision, rev)
	}
	if x, _ := cli.Get(ctx, "x"); len(x.Kvs) != 0 {
		t.Fatal("nested delete did not apply")
	}
	_, err = cli.Txn(ctx).Then(clientv3.OpPut("d", "1"), clientv3.OpPut("d", "2")).Commit()
	if err != rpctypes.ErrDuplicateKey {
		t.Fatalf("duplicate key: %v", err)
	}
}

func TestWatch(t *testing.T) {
	_, cli := startSingle(t, nil, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	first, _ := cli.Put(ctx, "w/0", "before")
	wc := cli.Watch(ctx, "w/", clientv3.WithPrefix(), clientv3.WithPrevKV())
	hist := cli.Watch(ctx, "w/", clientv3.WithPrefix(), clientv3.WithRev(first.Header.Revision))
	time.Sleep(100 * time.Millisecond)
	cli.Put(ctx, "w/1", "a")
	cli.Put(ctx, "w/1", "b")
	cli.Put(ctx, "other", "x")
	cli.Delete(ctx, "w/1")
	var got []string
	for len(got) < 3 {
		r := <-wc
		if err := r.Err(); err != nil {
			t.Fatal(err)
		}
		for _, ev := range r.Events {
			s := fmt.Sprintf("%s %s=%s", ev.Type, ev.Kv.Key, ev.Kv.Value)
			if ev.PrevKv != nil {
				s += " prev=" + string(ev.PrevKv.Value)
			}
			got = append(got, s)
		}
	}
	want := "PUT w/1=a|PUT w/1=b prev=a|DELETE w/1= prev=b"
	if strings.Join(got, "|") != want {
		t.Fatalf("events %q, want %q", strings.Join(got, "|"), want)
	}
	var n int
	for n < 4 {
		r := <-hist
		if r.Err() != nil {
			t.Fatal(r.Err())
		}
		n += len(r.Events)
	}
	// Compaction cancels a watch from before it.
	last, _ := cli.Put(ctx, "w/2", "c")
	if _, err := cli.Compact(ctx, last.Header.Revision); err != nil {
		t.Fatal(err)
	}
	cli.Put(ctx, "w/3", "d") // prunes
	old := cli.Watch(ctx, "w/", clientv3.WithPrefix(), clientv3.WithRev(first.Header.Revision))
	r := <-old
	if r.CompactRevision == 0 {
		t.Fatalf("watch from a compacted revision: %+v", r)
	}
	if _, err := cli.Get(ctx, "w/0", clientv3.WithRev(first.Header.Revision)); err != rpctypes.ErrCompacted {
		t.Fatalf("get at a compacted revision: %v", err)
	}
}

func TestLease(t *testing.T) {
	_, cli := startSingle(t, nil, "", "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g, err := cli.Grant(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "l/1", "v", clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, "l/2", "v", clientv3.WithLease(12345)); err != rpctypes.ErrLeaseNotFound {
		t.Fatalf("put with unknown lease: %v", err)
	}
	ttl, err := cli.TimeToLive(ctx, g.ID, clientv3.WithAttachedKeys())
	if err != nil || ttl.TTL <= 0 || ttl.GrantedTTL != 2 || len(ttl.Keys) != 1 {
		t.Fatalf("ttl: %+v %v", ttl, err)
	}
	ls, err := cli.Leases(ctx)
	if err != nil || len(ls.Leases) != 1 {
		t.Fatalf("leases: %v %v", ls, err)
	}
	// Kept alive for 3 s (beyond the TTL), the key stays.
	kctx, kcancel := context.WithCancel(ctx)
	ka, err := cli.KeepAlive(kctx, g.ID)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for range ka {
		}
	}()
	time.Sleep(3 * time.Second)
	if r, _ := cli.Get(ctx, "l/1"); len(r.Kvs) != 1 {
		t.Fatal("kept-alive key expired")
	}
	kcancel()
	// Without keep-alives it expires and the key goes.
	deadline := time.Now().Add(8 * time.Second)
	for {
		r, err := cli.Get(ctx, "l/1")
		if err != nil {
			t.Fatal(err)
		}
		if len(r.Kvs) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("lease did not expire")
		}
		time.Sleep(100 * time.Millisecond)
	}
	ttl, err = cli.TimeToLive(ctx, g.ID)
	if err != nil || ttl.TTL != -1 {
		t.Fatalf("ttl of an expired lease: %+v %v", ttl, err)
	}
	g2, _ := cli.Grant(ctx, 60)
	cli.Put(ctx, "l/3", "v", clientv3.WithLease(g2.ID))
	if _, err := cli.Revoke(ctx, g2.ID); err != nil {
		t.Fatal(err)
	}
	if r, _ := cli.Get(ctx, "l/3"); len(r.Kvs) != 0 {
		t.Fatal("revoke left the key")
	}
}

func TestAuth(t *testing.T) {
	creds := clientauth.New("alice", "s3cret")
	s, cli := startSingle(t, creds, "alice", "s3cret")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "a", "1"); err != nil {
		t.Fatal(err)
	}
	anon, err := clientv3.New(clientv3.Config{Endpoints: []string{s.Addr()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	if _, err := anon.Get(ctx, "a"); err != rpctypes.ErrUserEmpty {
		t.Fatalf("anonymous get: %v", err)
	}
	_, err = clientv3.New(clientv3.Config{Endpoints: []string{s.Addr()}, DialTimeout: 5 * time.Second, Username: "alice", Password: "wrong"})
	if err == nil || !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("wrong password: %v", err)
	}
	a := newAuthenticator(creds, time.Minute)
	tok := a.token("alice", time.Now())
	if _, err := a.check(tok, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := a.check(tok, time.Now().Add(2*time.Minute)); err != rpctypes.ErrGRPCInvalidAuthToken {
		t.Fatalf("expired token: %v", err)
	}
	if _, err := a.check(tok[:len(tok)-2]+"xx", time.Now()); err != rpctypes.ErrGRPCInvalidAuthToken {
		t.Fatalf("forged token: %v", err)
	}
}

// memTxn is an in-memory meta.KVTxn for the fuzz target (apply logic
// only; the meta overlay is exercised by the tests above).
type memTxn struct{ m map[string][]byte }

func (t *memTxn) Get(k []byte) ([]byte, bool, error) { v, ok := t.m[string(k)]; return v, ok, nil }
func (t *memTxn) Set(k, v []byte)                    { t.m[string(k)] = append([]byte{}, v...) }
func (t *memTxn) Delete(k []byte)                    { delete(t.m, string(k)) }
func (t *memTxn) Discard()                           {}
func (t *memTxn) Scan(start, end []byte, fn func(k, v []byte) error) error {
	var keys []string
	for k := range t.m {
		if k >= string(start) && (end == nil || k < string(end)) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := fn([]byte(k), t.m[k]); err != nil {
			return err
		}
	}
	return nil
}

// FuzzApplyRequest feeds arbitrary requests to the state machine: it
// must never panic nor fail with anything but a request error.
func FuzzApplyRequest(f *testing.F) {
	seeds := []*pb.InternalRaftRequest{
		{Put: &pb.PutRequest{Key: []byte("a"), Value: []byte("1")}},
		{DeleteRange: &pb.DeleteRangeRequest{Key: []byte("a"), RangeEnd: []byte{0}}},
		{Txn: &pb.TxnRequest{Compare: []*pb.Compare{{Key: []byte("a"), Target: pb.Compare_VALUE, TargetUnion: &pb.Compare_Value{Value: []byte("1")}}},
			Success: []*pb.RequestOp{{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte("b")}}}},
			Failure: []*pb.RequestOp{{Request: &pb.RequestOp_RequestRange{RequestRange: &pb.RangeRequest{Key: []byte("a"), Revision: 1}}}}}},
		{LeaseGrant: &pb.LeaseGrantRequest{TTL: 5}},
		{LeaseRevoke: &pb.LeaseRevokeRequest{ID: 1 << 40}},
		{Compaction: &pb.CompactionRequest{Revision: 2}},
	}
	for _, s := range seeds {
		b, _ := proto.Marshal(s)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, req []byte) {
		m := NewMachine()
		tx := &memTxn{m: map[string][]byte{}}
		// Some state first, so requests meet keys, leases and events.
		for _, s := range seeds[:4] {
			b, _ := proto.Marshal(s)
			if _, err := m.Apply(tx, b); err != nil {
				t.Fatal(err)
			}
		}
		resp, err := m.Apply(tx, req)
		if err != nil {
			t.Fatalf("storage error on a request: %v", err)
		}
		if len(resp) == 0 {
			t.Fatal("empty response")
		}
		if _, err := loadState(tx); err != nil {
			t.Fatal(err)
		}
	})
}

// TestReadOnlyTxn checks that a Txn that only reads is answered without
// a Raft command, with the same results as through Raft.
func TestReadOnlyTxn(t *testing.T) {
	s, cli := startSingle(t, nil, "", "")
	ctx := context.Background()
	put, err := cli.Put(ctx, "x", "1")
	if err != nil {
		t.Fatal(err)
	}
	before := s.svc.AppliedIndex()
	r, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.Value("x"), "=", "1")).Then(
		clientv3.OpGet("x"), clientv3.OpTxn(nil, []clientv3.Op{clientv3.OpGet("nope")}, nil),
	).Else(clientv3.OpGet("nope")).Commit()
	if err != nil {
		t.Fatal(err)
	}
	if !r.Succeeded || len(r.Responses) != 2 || kvs(r.Responses[0].GetResponseRange().Kvs) != "x=1" ||
		r.Header.Revision != put.Header.Revision || r.Responses[1].GetResponseTxn() == nil {
		t.Fatalf("read-only txn: %v", r)
	}
	r, err = cli.Txn(ctx).If(clientv3.Compare(clientv3.Version("x"), ">", 1)).Else(clientv3.OpGet("x", clientv3.WithSerializable())).Commit()
	if err != nil || r.Succeeded || kvs(r.Responses[0].GetResponseRange().Kvs) != "x=1" {
		t.Fatalf("serializable read-only txn: %v, %v", r, err)
	}
	_, err = cli.Txn(ctx).Then(clientv3.OpGet("x", clientv3.WithRev(put.Header.Revision+5))).Commit()
	if err != rpctypes.ErrFutureRev {
		t.Fatalf("read-only txn at a future revision: %v", err)
	}
	if after := s.svc.AppliedIndex(); after != before {
		t.Fatalf("read-only Txns went through Raft: applied index %d -> %d", before, after)
	}
	// A Txn with a write still goes through Raft.
	if _, err := cli.Txn(ctx).Then(clientv3.OpGet("x"), clientv3.OpPut("y", "2")).Commit(); err != nil {
		t.Fatal(err)
	}
	if after := s.svc.AppliedIndex(); after == before {
		t.Fatal("a Txn with a put did not go through Raft")
	}
}

// TestHistoryPruning checks the automatic compaction of the event log:
// it keeps HistoryRevisions revisions, pruned in steps of pruneEvery.
func TestHistoryPruning(t *testing.T) {
	m := NewMachine()
	tx := &memTxn{m: map[string][]byte{}}
	for i := range HistoryRevisions + 3*pruneEvery + 7 {
		b, _ := proto.Marshal(&pb.InternalRaftRequest{Put: &pb.PutRequest{Key: []byte(fmt.Sprintf("k%d", i%10)), Value: []byte("v")}})
		if resp, err := m.Apply(tx, b); err != nil || resp[0] != byte(codeOK) {
			t.Fatalf("put %d: %v %v", i, resp, err)
		}
	}
	st, err := loadState(tx)
	if err != nil {
		t.Fatal(err)
	}
	if lo := st.rev - HistoryRevisions; st.compactRev > lo || st.compactRev+pruneEvery < lo {
		t.Fatalf("rev %d: compacted to %d, want within %d below %d", st.rev, st.compactRev, pruneEvery, lo)
	}
	var first, n uint64
	err = scanEvents(tx, 0, 0, func(rev uint64, _ *mvccpb.Event) error {
		if first == 0 {
			first = rev
		}
		n++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if first != st.compactRev+1 || n != st.rev-st.compactRev {
		t.Fatalf("events: first %d, %d of them; state rev %d compacted %d", first, n, st.rev, st.compactRev)
	}
}
