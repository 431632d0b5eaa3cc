package meta

import (
	"errors"

	"github.com/dgraph-io/badger/v4"
)

// ChangeKind says what a Change is about.
type ChangeKind uint8

// The kinds of change the state machine reports.
const (
	// ChangeInode: the attributes, content or block map of Ino changed,
	// or the inode was deleted.
	ChangeInode ChangeKind = iota + 1
	// ChangeEntry: the entry Name in directory Parent was added or now
	// names another inode (Ino).
	ChangeEntry
	// ChangeEntryRemoved: the entry Name in directory Parent, which named
	// Ino, was removed.
	ChangeEntryRemoved
)

// Change is one effect of an applied command, reported to
// Config.OnChange so that a node can invalidate kernel caches for changes
// made through other nodes.
type Change struct {
	Kind   ChangeKind
	Ino    Ino
	Parent Ino
	Name   string
}

// changeSet is what one command changed and which node proposed it.
type changeSet struct {
	origin  string
	changes []Change
}

// collectChanges derives a command's changes from its pending writes;
// it reads the entries it removes (for their inode) from txn, before the
// writes are applied.
func collectChanges(txn *badger.Txn, writes map[string]write) []Change {
	var out []Change
	seen := map[Ino]bool{}
	inode := func(ino Ino) {
		if !seen[ino] {
			seen[ino] = true
			out = append(out, Change{Kind: ChangeInode, Ino: ino})
		}
	}
	for k, w := range writes {
		if len(k) < 9 {
			continue
		}
		switch k[0] {
		case prefixInode, prefixBlock:
			inode(Ino(beUint64([]byte(k[1:9]))))
		case prefixDentry:
			parent, name := Ino(beUint64([]byte(k[1:9]))), k[9:]
			if !w.del {
				ino, _, _ := decodeDentry(w.val)
				out = append(out, Change{Kind: ChangeEntry, Parent: parent, Name: name, Ino: ino})
				continue
			}
			var ino Ino
			item, err := txn.Get([]byte(k))
			if err == nil {
				_ = item.Value(func(v []byte) error {
					ino, _, err = decodeDentry(v)
					return err
				})
			} else if !errors.Is(err, badger.ErrKeyNotFound) {
				continue
			}
			out = append(out, Change{Kind: ChangeEntryRemoved, Parent: parent, Name: name, Ino: ino})
		}
	}
	return out
}
