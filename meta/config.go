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

	// Transport is the node RPC and stream transport. With it set, Raft
	// runs over its "raft" streams (the Raft server address is
	// Transport.Addr(), BindAddr is ignored), followers forward writes to
	// the leader, reads are linearizable (ReadIndex) and the service
	// answers the cluster RPCs (ops 0x0100-0x01ff). Without it the service
	// is a single voter over a private loopback Raft transport.
	Transport Transport
	// Peers are the bootstrap voters, node id -> address, and must be the
	// same on every node. A node with no Raft state bootstraps the cluster
	// with exactly these voters (concurrent identical bootstraps are
	// harmless). NodeID must be one of them. Requires Transport.
	Peers map[string]string
	// Join is the address of any member of a running cluster. A node with
	// no Raft state asks it to be added (as a non-voter unless Voter) and
	// retries until ctx of Open ends. Ignored once the node has state.
	// Requires Transport.
	Join string
	// Voter makes a joining node a voter instead of a non-voter.
	Voter bool
	// OnChange, if set, is called after commands are applied with what
	// they changed, on every node (see Change). It runs on the state
	// machine goroutine: it must be cheap and must not block.
	OnChange func(origin string, changes []Change)
	// KV is the KV machine: a deterministic state machine in its own
	// keyspace of the replicated state, fed by ApplyKV (see KVMachine).
	// Every node of a cluster must configure the same machine: a node
	// without one applies KV commands as failures and its KV keyspace
	// diverges (nil: ApplyKV and ViewKV fail).
	KV KVMachine
	// RetryTimeout bounds how long a write or a linearizable read waits
	// for a leader (elections, partitions) when ctx has no earlier
	// deadline (0: 30s). Within it callers see a pause, not an error.
	RetryTimeout time.Duration
}

// clustered reports whether the service takes part in a multi-node
// cluster (a Transport is configured).
func (c *Config) clustered() bool { return c.Transport != nil }

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
	if c.RetryTimeout == 0 {
		c.RetryTimeout = 30 * time.Second
	}
	return c
}
