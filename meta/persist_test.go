package meta

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/raft"
)

// dumpDB returns every key and value of a state database.
func dumpDB(t testing.TB, db *badger.DB) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.DefaultIteratorOptions)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			out[string(it.Item().Key())] = string(v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// populate runs a mix of every kind of command; round makes names unique.
func populate(t testing.TB, s *Service, round int) {
	t.Helper()
	ctx := context.Background()
	d := mk(t, s, RootIno, fmt.Sprintf("dir%d", round), modeDir)
	f := mk(t, s, d.Ino, "file", modeFile)
	mk(t, s, d.Ino, "sub", modeDir)
	if _, err := s.Create(ctx, CreateRequest{Parent: d.Ino, Name: "ln", Mode: syscall.S_IFLNK | 0o777, Target: "file", Now: 1}); err != nil {
		t.Fatal(err)
	}
	id, err := s.AllocBlocks(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.CommitWrite(ctx, WriteCommit{Ino: f.Ino, Size: 9000, Now: 2, Blocks: map[uint64]BlockRef{
		0: {id, 4096}, 1: {id + 1, 4096}, 1 << 22: {id + 2, 10}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetAttr(ctx, f.Ino, SetAttrRequest{Valid: SetSize | SetMode, Size: 5000, Mode: 0o600, Now: 3}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetXattr(ctx, f.Ino, "user.x", []byte("val"), 0, 4); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Link(ctx, f.Ino, RootIno, fmt.Sprintf("hard%d", round), 5); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Rename(ctx, d.Ino, "sub", RootIno, fmt.Sprintf("moved%d", round), 0, 6); err != nil {
		t.Fatal(err)
	}
	o := mk(t, s, d.Ino, "orphan", modeFile)
	if _, err := s.Unlink(ctx, d.Ino, "orphan", 7); err != nil {
		t.Fatal(err)
	}
	_ = o
	if _, err := s.Create(ctx, CreateRequest{Parent: d.Ino, Name: "file", Mode: modeFile}); !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("want EEXIST, got %v", err)
	}
}

func TestReopen(t *testing.T) {
	dir := t.TempDir()
	s := openTest(t, dir)
	populate(t, s, 0)
	before := dumpDB(t, s.stateDB)
	applied := s.AppliedIndex()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.GetAttr(context.Background(), RootIno); !errors.Is(err, ErrClosed) {
		t.Fatalf("GetAttr after Close: %v", err)
	}

	// No snapshot exists, so Raft replays the whole log on reopen: every
	// entry must be skipped as already applied.
	s = openTest(t, dir)
	if got := dumpDB(t, s.stateDB); !maps.Equal(got, before) {
		t.Fatalf("state differs after reopen:\n%v\nvs\n%v", got, before)
	}
	if s.AppliedIndex() != applied {
		t.Fatalf("applied %d -> %d", applied, s.AppliedIndex())
	}
	populate(t, s, 1) // still writable; counters continue
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	cfg := testConfig(dir)
	cfg.BlockSize = 8192
	if _, err := Open(context.Background(), cfg); err == nil {
		t.Fatal("Open with another block size succeeded")
	}
	cfg.BlockSize = 0 // adopt the stored block size
	s = openTestConfig(t, cfg)
	if s.BlockSize() != 4096 {
		t.Fatalf("BlockSize = %d", s.BlockSize())
	}
}

func TestDefaultBlockSize(t *testing.T) {
	cfg := testConfig(t.TempDir())
	cfg.BlockSize = 0
	s := openTestConfig(t, cfg)
	if s.BlockSize() != DefaultBlockSize {
		t.Fatalf("BlockSize = %d", s.BlockSize())
	}
}

// copyDir copies a closed Badger directory.
func copyDir(t testing.TB, from, to string) {
	t.Helper()
	if err := os.RemoveAll(to); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
}

// TestReplayAfterLostState simulates a crash in which the state database
// lost its last unsynced writes while the synced Raft log kept them: the
// state directory is rolled back to an earlier copy. Replay must apply
// exactly the missing commands, once.
func TestReplayAfterLostState(t *testing.T) {
	dir := t.TempDir()
	checkpoint := filepath.Join(t.TempDir(), "state")
	s := openTest(t, dir)
	populate(t, s, 0)
	s.Close()
	copyDir(t, filepath.Join(dir, "state"), checkpoint)

	s = openTest(t, dir)
	populate(t, s, 1)
	want := dumpDB(t, s.stateDB)
	s.Close()

	copyDir(t, checkpoint, filepath.Join(dir, "state"))
	s = openTest(t, dir)
	if got := dumpDB(t, s.stateDB); !maps.Equal(got, want) {
		t.Fatalf("replayed state differs:\n%v\nwant\n%v", got, want)
	}
}

func TestSnapshotCompactionAndRestore(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.SnapshotThreshold = 16
	cfg.TrailingLogs = 8
	s := openTestConfig(t, cfg)
	ctx := context.Background()
	for i := 0; i < 10; i++ {
		populate(t, s, i)
	}
	if err := s.Snapshot(ctx); err != nil {
		t.Fatal(err)
	}
	first, err := s.logs.FirstIndex()
	if err != nil {
		t.Fatal(err)
	}
	last, _ := s.logs.LastIndex()
	if first <= 1 || last-first > 2*cfg.TrailingLogs {
		t.Fatalf("log not compacted: first %d last %d", first, last)
	}
	want := dumpDB(t, s.stateDB)
	s.Close()

	// Reopen: state kept, the compacted log is not needed.
	s = openTestConfig(t, cfg)
	if got := dumpDB(t, s.stateDB); !maps.Equal(got, want) {
		t.Fatal("state differs after reopen with compacted log")
	}
	s.Close()

	// Restore the snapshot into a fresh state machine.
	snaps, err := raft.NewFileSnapshotStore(filepath.Join(dir, "snapshots"), 2, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	metas, err := snaps.List()
	if err != nil || len(metas) == 0 {
		t.Fatalf("snapshots %v, %v", metas, err)
	}
	_, rc, err := snaps.Open(metas[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	db, err := openBadger(t.TempDir(), false, 8<<20, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	f, err := newFSM(db, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(rc); err != nil {
		t.Fatal(err)
	}
	if got := dumpDB(t, db); !maps.Equal(got, want) {
		t.Fatal("restored state differs")
	}
	if f.applied.Load() < metas[0].Index {
		t.Fatalf("restored applied %d < snapshot index %d", f.applied.Load(), metas[0].Index)
	}

	// Lose the state directory entirely: Open restores the snapshot and
	// replays the log after it.
	if err := os.RemoveAll(filepath.Join(dir, "state")); err != nil {
		t.Fatal(err)
	}
	s = openTestConfig(t, cfg)
	if got := dumpDB(t, s.stateDB); !maps.Equal(got, want) {
		t.Fatal("state differs after recovery from snapshot")
	}
	populate(t, s, 100)
}

func TestDataDirInUse(t *testing.T) {
	dir := t.TempDir()
	openTest(t, dir)
	_, err := Open(context.Background(), testConfig(dir))
	if !errors.Is(err, ErrDataDirInUse) {
		t.Fatalf("second Open: %v, want ErrDataDirInUse", err)
	}
}

func TestRaftStore(t *testing.T) {
	db, err := openBadger(t.TempDir(), true, 8<<20, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rs := &raftStore{db: db}
	if v, err := rs.Get([]byte("k")); err == nil || err.Error() != "not found" || v != nil {
		t.Fatalf("Get missing = %v, %v", v, err)
	}
	if _, err := rs.GetUint64([]byte("k")); err == nil || err.Error() != "not found" {
		t.Fatalf("GetUint64 missing: %v", err)
	}
	if err := rs.SetUint64([]byte("k"), 42); err != nil {
		t.Fatal(err)
	}
	if v, err := rs.GetUint64([]byte("k")); err != nil || v != 42 {
		t.Fatalf("GetUint64 = %d, %v", v, err)
	}
	var logs []*raft.Log
	for i := uint64(5); i <= 300; i++ {
		logs = append(logs, &raft.Log{Index: i, Term: 2, Type: raft.LogCommand, Data: []byte{byte(i)}, Extensions: []byte("e")})
	}
	if err := rs.StoreLogs(logs); err != nil {
		t.Fatal(err)
	}
	if f, _ := rs.FirstIndex(); f != 5 {
		t.Fatalf("FirstIndex %d", f)
	}
	if l, _ := rs.LastIndex(); l != 300 {
		t.Fatalf("LastIndex %d", l)
	}
	var got raft.Log
	if err := rs.GetLog(256, &got); err != nil || got.Term != 2 || got.Data[0] != 0 || string(got.Extensions) != "e" {
		t.Fatalf("GetLog = %+v, %v", got, err)
	}
	if err := rs.GetLog(4, &got); !errors.Is(err, raft.ErrLogNotFound) {
		t.Fatalf("GetLog missing: %v", err)
	}
	if err := rs.DeleteRange(5, 255); err != nil {
		t.Fatal(err)
	}
	if f, _ := rs.FirstIndex(); f != 256 {
		t.Fatalf("FirstIndex after DeleteRange %d", f)
	}
	if err := rs.DeleteRange(256, 300); err != nil {
		t.Fatal(err)
	}
	if l, _ := rs.LastIndex(); l != 0 {
		t.Fatalf("LastIndex of empty log %d", l)
	}
}
