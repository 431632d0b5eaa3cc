package fs

import (
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/datenlord/datenlord-go/meta"
)

// Cross-node invalidation.
//
// In a cluster, another node may change an inode or a directory entry that
// this node's kernel has cached (attributes and entries are cached for
// Config.AttrTimeout and Config.EntryTimeout, 1s by default). The metadata
// service reports every applied change with the node that proposed it
// (meta.Config.OnChange); a Notifier turns the changes made by other nodes
// into FUSE notifications, so the kernel drops what it cached at once:
//
//   - an inode changed (attributes, size, block map, deleted): InodeNotify,
//     which drops the cached attributes and page cache of the inode;
//   - an entry added or replaced: EntryNotify on (parent, name);
//   - an entry removed: DeleteNotify on (parent, child, name).
//
// The kernel caches thus are stale at most for the time a notification
// takes, and never longer than the timeouts when one is dropped.
// Notifications are delivered by one goroutine from a bounded queue: the
// state machine must never wait for the kernel (a notification can block
// while the kernel holds a lock of an inode whose request is waiting for
// this very node's metadata). When the queue is full a batch is dropped
// and counted; the timeouts bound the staleness.
//
// Close-to-open does not depend on notifications: open reloads the block
// map with a linearizable read.

// notifyQueue is how many change batches wait for delivery.
const notifyQueue = 4096

// Notifier delivers invalidations for changes made by other nodes to the
// kernel of an attached mount. Its OnChange is meant for
// meta.Config.OnChange: create the Notifier before the metadata service,
// Attach the file system once it is mounted.
type Notifier struct {
	self  string
	log   *slog.Logger
	queue chan []meta.Change
	fs    atomic.Pointer[FS]
	// Dropped counts change batches dropped because the queue was full.
	dropped atomic.Uint64
	done    chan struct{}
	stop    sync.Once
	stopped chan struct{}
}

// NewNotifier returns a Notifier for node self; changes proposed by self
// (and by no node: the single-node service) are ignored, since this
// node's kernel saw them happen.
func NewNotifier(self string, log *slog.Logger) *Notifier {
	if log == nil {
		log = slog.Default()
	}
	n := &Notifier{self: self, log: log, queue: make(chan []meta.Change, notifyQueue),
		done: make(chan struct{}), stopped: make(chan struct{})}
	go n.run()
	return n
}

// OnChange queues changes made by another node; it never blocks.
func (n *Notifier) OnChange(origin string, changes []meta.Change) {
	if origin == "" || origin == n.self || n.fs.Load() == nil {
		return
	}
	select {
	case n.queue <- changes:
	default:
		n.dropped.Add(1)
	}
}

// Attach starts invalidating the kernel caches of f (nil: detach).
func (n *Notifier) Attach(f *FS) { n.fs.Store(f) }

// Dropped returns how many change batches were dropped.
func (n *Notifier) Dropped() uint64 { return n.dropped.Load() }

// Close stops delivery and waits for the delivering goroutine.
func (n *Notifier) Close() {
	n.stop.Do(func() { close(n.done) })
	<-n.stopped
}

func (n *Notifier) run() {
	defer close(n.stopped)
	for {
		select {
		case <-n.done:
			return
		case changes := <-n.queue:
			if f := n.fs.Load(); f != nil {
				f.invalidate(changes)
			}
		}
	}
}

// invalidate tells the kernel to forget what changes made stale. Inodes
// and entries the kernel does not know answer ENOENT, which is fine.
func (f *FS) invalidate(changes []meta.Change) {
	for _, c := range changes {
		var st fuse.Status
		switch c.Kind {
		case meta.ChangeInode:
			st = f.server.InodeNotify(uint64(c.Ino), 0, -1)
		case meta.ChangeEntry:
			st = f.server.EntryNotify(uint64(c.Parent), c.Name)
		case meta.ChangeEntryRemoved:
			if c.Ino != 0 {
				st = f.server.DeleteNotify(uint64(c.Parent), uint64(c.Ino), c.Name)
			} else {
				st = f.server.EntryNotify(uint64(c.Parent), c.Name)
			}
		}
		if !st.Ok() && st != fuse.ENOENT {
			f.raw.log.Debug("fs: kernel invalidation failed", "change", c, "status", st)
		}
	}
}

// IsOpen reports whether ino is open on this node (a handle or a pending
// release holds it). With OldestOpenIndex and InFlightBlocks it makes *FS
// a meta.LocalPins: an orphan open here is not purged by another node.
func (f *FS) IsOpen(ino meta.Ino) bool {
	f.raw.mu.RLock()
	defer f.raw.mu.RUnlock()
	of := f.raw.files[ino]
	return of != nil && of.refs > 0
}

var _ meta.LocalPins = (*FS)(nil)
