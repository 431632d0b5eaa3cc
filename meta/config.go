package meta

import (
	"log/slog"
	"time"
)

// Config configures a metadata service.
type Config struct {
	// Dir is where the Raft log, stable store, snapshots and the Badger
	// state machine live. It is created if missing.
	Dir string
	// NodeID is this node's Raft server id ("node1" by default).
	NodeID string
	// BindAddr is the Raft transport address ("127.0.0.1:0" picks a free
	// port on loopback; a single voter never talks to anyone).
	BindAddr string
	// SnapshotThreshold is how many log entries since the last snapshot
	// trigger a new one (0: 8192).
	SnapshotThreshold uint64
	// SnapshotInterval is how often Raft checks the threshold (0: 30s).
	SnapshotInterval time.Duration
	// TrailingLogs is how many entries stay in the log after a snapshot
	// (0: 1024).
	TrailingLogs uint64
	// BlockSize is the file system block size in bytes, fixed when the
	// namespace is bootstrapped. 0 means 512 KiB for a new namespace and
	// whatever it was formatted with for an existing one; any other value
	// must match the existing namespace.
	BlockSize uint32
	// ElectionTimeout is Raft's heartbeat and election timeout (0: 1s). A
	// single voter waits about this long at start before it elects itself.
	ElectionTimeout time.Duration
	// Logger receives structured logs (nil: slog.Default()).
	Logger *slog.Logger
}

// DefaultBlockSize is the block size of a new namespace when
// Config.BlockSize is 0.
const DefaultBlockSize = 512 << 10

func (c Config) withDefaults() Config {
	if c.NodeID == "" {
		c.NodeID = "node1"
	}
	if c.BindAddr == "" {
		c.BindAddr = "127.0.0.1:0"
	}
	if c.SnapshotThreshold == 0 {
		c.SnapshotThreshold = 8192
	}
	if c.SnapshotInterval == 0 {
		c.SnapshotInterval = 30 * time.Second
	}
	if c.TrailingLogs == 0 {
		c.TrailingLogs = 1024
	}
	if c.ElectionTimeout == 0 {
		c.ElectionTimeout = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}
