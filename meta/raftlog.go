package meta

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/hashicorp/raft"
)

// errStableKeyNotFound is what the stable store returns for a missing key.
// Raft compares the message verbatim ("not found") to tell "empty" from a
// failure (see raft.HasExistingState and NewRaft), so the text must not
// change.
var errStableKeyNotFound = errors.New("not found")

// Key prefixes of the Raft database. Log keys are the prefix and the index
// in big-endian order, so iteration runs in index order.
const (
	raftLogPrefix    = 'l'
	raftStablePrefix = 's'
)

// raftStore is the Raft log store and stable store, kept in its own Badger
// database with synchronous writes: a log entry that Raft acknowledged must
// survive a crash, because the state machine database is not synced on
// every write and is rebuilt from the log.
type raftStore struct {
	db *badger.DB
}

var (
	_ raft.LogStore    = (*raftStore)(nil)
	_ raft.StableStore = (*raftStore)(nil)
)

func raftLogKey(index uint64) []byte {
	k := make([]byte, 9)
	k[0] = raftLogPrefix
	binary.BigEndian.PutUint64(k[1:], index)
	return k
}

// encodeRaftLog encodes everything of a log entry but its index (the key).
// Layout: term u64, type u8, appendedAt unix-nanos i64, len(data) u32,
// data, len(extensions) u32, extensions.
func encodeRaftLog(l *raft.Log) []byte {
	b := make([]byte, 0, 8+1+8+4+len(l.Data)+4+len(l.Extensions))
	b = binary.BigEndian.AppendUint64(b, l.Term)
	b = append(b, byte(l.Type))
	var at int64
	if !l.AppendedAt.IsZero() {
		at = l.AppendedAt.UnixNano()
	}
	b = binary.BigEndian.AppendUint64(b, uint64(at))
	b = binary.BigEndian.AppendUint32(b, uint32(len(l.Data)))
	b = append(b, l.Data...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(l.Extensions)))
	b = append(b, l.Extensions...)
	return b
}

func decodeRaftLog(index uint64, b []byte, l *raft.Log) error {
	const fixed = 8 + 1 + 8 + 4
	if len(b) < fixed {
		return fmt.Errorf("raft log %d: short record (%d bytes)", index, len(b))
	}
	l.Index = index
	l.Term = binary.BigEndian.Uint64(b)
	l.Type = raft.LogType(b[8])
	if at := int64(binary.BigEndian.Uint64(b[9:])); at != 0 {
		l.AppendedAt = time.Unix(0, at)
	} else {
		l.AppendedAt = time.Time{}
	}
	n := uint64(binary.BigEndian.Uint32(b[17:]))
	rest := b[fixed:]
	if uint64(len(rest)) < n+4 {
		return fmt.Errorf("raft log %d: truncated data", index)
	}
	l.Data = append([]byte(nil), rest[:n]...)
	rest = rest[n:]
	m := uint64(binary.BigEndian.Uint32(rest))
	rest = rest[4:]
	if uint64(len(rest)) != m {
		return fmt.Errorf("raft log %d: bad extensions length", index)
	}
	l.Extensions = nil
	if m > 0 {
		l.Extensions = append([]byte(nil), rest...)
	}
	return nil
}

// FirstIndex returns the first index written, 0 for no entries.
func (s *raftStore) FirstIndex() (uint64, error) {
	return s.edgeIndex(false)
}

// LastIndex returns the last index written, 0 for no entries.
func (s *raftStore) LastIndex() (uint64, error) {
	return s.edgeIndex(true)
}

func (s *raftStore) edgeIndex(last bool) (uint64, error) {
	var idx uint64
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.PrefetchValues = false
		opts.Reverse = last
		opts.Prefix = []byte{raftLogPrefix}
		it := txn.NewIterator(opts)
		defer it.Close()
		if last {
			it.Seek(raftLogKey(^uint64(0)))
		} else {
			it.Seek([]byte{raftLogPrefix})
		}
		if it.Valid() {
			idx = binary.BigEndian.Uint64(it.Item().Key()[1:])
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("raft log: read edge index: %w", err)
	}
	return idx, nil
}

// GetLog reads the entry at index into l, raft.ErrLogNotFound if absent.
func (s *raftStore) GetLog(index uint64, l *raft.Log) error {
	return s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(raftLogKey(index))
		if errors.Is(err, badger.ErrKeyNotFound) {
			return raft.ErrLogNotFound
		}
		if err != nil {
			return fmt.Errorf("raft log: get %d: %w", index, err)
		}
		return item.Value(func(v []byte) error { return decodeRaftLog(index, v, l) })
	})
}

// StoreLog stores one entry durably.
func (s *raftStore) StoreLog(l *raft.Log) error {
	return s.StoreLogs([]*raft.Log{l})
}

// StoreLogs stores entries durably in one synced write batch.
func (s *raftStore) StoreLogs(logs []*raft.Log) error {
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, l := range logs {
		if err := wb.Set(raftLogKey(l.Index), encodeRaftLog(l)); err != nil {
			return fmt.Errorf("raft log: store %d: %w", l.Index, err)
		}
	}
	if err := wb.Flush(); err != nil {
		return fmt.Errorf("raft log: store %d entries: %w", len(logs), err)
	}
	return nil
}

// DeleteRange deletes the entries min..max inclusive.
func (s *raftStore) DeleteRange(lo, hi uint64) error {
	if lo > hi {
		return nil
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	err := s.db.View(func(txn *badger.Txn) error {
		opts := badger.DefaultIteratorOptions
		opts.PrefetchValues = false
		opts.Prefix = []byte{raftLogPrefix}
		it := txn.NewIterator(opts)
		defer it.Close()
		for it.Seek(raftLogKey(lo)); it.Valid(); it.Next() {
			k := it.Item().KeyCopy(nil)
			if binary.BigEndian.Uint64(k[1:]) > hi {
				break
			}
			if err := wb.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = wb.Flush()
	}
	if err != nil {
		return fmt.Errorf("raft log: delete %d..%d: %w", lo, hi, err)
	}
	return nil
}

func stableKey(key []byte) []byte {
	return append([]byte{raftStablePrefix}, key...)
}

// Set stores a stable key durably.
func (s *raftStore) Set(key, val []byte) error {
	err := s.db.Update(func(txn *badger.Txn) error {
		return txn.Set(stableKey(key), append([]byte(nil), val...))
	})
	if err != nil {
		return fmt.Errorf("raft stable: set %q: %w", key, err)
	}
	return nil
}

// Get returns the value of a stable key; errStableKeyNotFound if absent.
func (s *raftStore) Get(key []byte) ([]byte, error) {
	var val []byte
	err := s.db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(stableKey(key))
		if err != nil {
			return err
		}
		val, err = item.ValueCopy(nil)
		return err
	})
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, errStableKeyNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("raft stable: get %q: %w", key, err)
	}
	return val, nil
}

// SetUint64 stores a stable uint64 durably.
func (s *raftStore) SetUint64(key []byte, val uint64) error {
	return s.Set(key, binary.BigEndian.AppendUint64(nil, val))
}

// GetUint64 returns a stable uint64; errStableKeyNotFound if absent.
func (s *raftStore) GetUint64(key []byte) (uint64, error) {
	v, err := s.Get(key)
	if err != nil {
		return 0, err
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("raft stable: %q: bad uint64 of %d bytes", key, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}
