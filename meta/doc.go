// Package meta is the metadata service: inodes, directory entries, block
// maps, extended attributes and id counters, replicated with Raft
// (hashicorp/raft) over a Badger state machine.
//
// # Structure
//
// One concept per file:
//
//   - service.go: Service, Open/Close and the POSIX-shaped API the file
//     system calls. Every mutation goes through Service.apply (one Raft
//     command), every read through Service.view (one Badger read
//     transaction). Those two functions are the seams for the multi-node
//     work: forwarding to the leader, and leader-confirmed reads.
//   - fsm.go: the Raft state machine (apply, snapshot, restore).
//   - ops.go: the command handlers, one per mutation, with POSIX checks.
//   - encoding.go: key layout, binary records and the command encoding.
//   - raftlog.go: the Raft log store and stable store over Badger.
//   - config.go, logging.go: configuration and log adapters.
//   - cluster.go: the multi-node service: Raft over the node transport,
//     forwarding of writes to the leader, linearizable reads (ReadIndex).
//   - dedup.go: command ids and the replicated table that makes a retried
//     command apply once.
//   - membership.go: status, adding and removing members, and the clients
//     of those RPCs (the cluster command).
//   - pins.go: every node's garbage collection pins and open inodes.
//   - change.go: what applied commands changed, for kernel invalidation.
//
// # Errors
//
// POSIX conditions are syscall.Errno values (ENOENT, EEXIST, ENOTDIR,
// EISDIR, ENOTEMPTY, ENAMETOOLONG, EPERM, EINVAL, ENODATA, E2BIG, ERANGE,
// EMLINK). A command that fails with one changes nothing but the applied
// index. Anything else is an internal error, wrapped with context.
//
// # On disk
//
// Dir/raft is a Badger database holding the Raft log (key 'l' + big-endian
// index, so iteration is in index order) and stable store ('s' + key),
// written with SyncWrites: a command is acknowledged only once its log entry
// is on disk. Dir/snapshots is Raft's file snapshot store (two retained).
// Dir/state is the state machine, a second Badger database. Its keys
// (integers big-endian, so byte order is numeric order):
//
//	i ino              -> inode: version u8, mode uid gid nlink rdev u32,
//	                      size atime mtime ctime version parent u64,
//	                      then the symlink target
//	d parent name      -> child ino u64, type bits u32 (ReadDir is a prefix
//	                      scan, in name order)
//	b ino index        -> block id u64, len u32 (one key per block, so a
//	                      flush touches only its blocks and sparse files or
//	                      files past 4 GiB cost only what they map)
//	x ino name         -> xattr value
//	o ino              -> orphan: unlinked (nlink 0), not yet purged
//	g freedAt id       -> garbage block, oldest first
//	G id               -> freedAt, to forget garbage by id
//	mcounters          -> applied index, next ino, next block id, block
//	                      size, inode count, used bytes
//
// # Command flow
//
// A method validates what it can cheaply, encodes a command (a version byte
// and JSON, carrying the proposer's clock in Now: the state machine never
// reads the clock) and calls raft.Apply. Raft appends it to the synced log,
// commits it and hands it to the state machine, which applies a batch of
// commands in one Badger transaction and returns each result (attributes
// or an errno) through the ApplyFuture. Concurrent callers are batched by
// Raft into one log write and one transaction; nothing serializes them
// before Raft.
//
// # Idempotent apply and NoSnapshotRestoreOnStart
//
// The state database is written without fsync; the Raft log is the
// durable record. The index of the last applied command is stored in the
// counters record in the same transaction as the command's effects, and
// the state machine skips entries at or below it. Therefore:
//
//   - Raft is configured with NoSnapshotRestoreOnStart: on start it does
//     not wipe and reload the persistent state from the last snapshot; it
//     replays the log after that snapshot, and idempotence skips what the
//     database already holds while re-applying what an unsynced write lost.
//   - Before a snapshot the state database is synced, so when Raft then
//     compacts the log nothing it drops can still be missing from the state.
//     The snapshot streams a Badger backup. It may include effects of
//     commands after the snapshot index (the backup runs concurrently with
//     apply); the applied index travels in the same backup, so the replay
//     after a Restore skips them.
//   - If the state machine is found behind the newest snapshot at Open (its
//     directory was lost), Open restores that snapshot before starting
//     Raft.
//
// # Cluster
//
// With Config.Transport set the service is one node of a cluster; Raft
// runs over the transport's "raft" streams, so the Raft address of a node
// is its node address and one port carries everything. A node with no Raft
// state bootstraps with Config.Peers (every node the same list; identical
// concurrent bootstraps are harmless) or asks Config.Join to add it. The
// namespace root is created by the first leader: every new leader commits
// an idempotent bootstrap command before it serves reads (ensureReady).
//
// Writes: apply on a follower forwards the encoded command to the leader
// (OpForward), which applies it and returns the encoded result; POSIX
// errors travel in the result as errnos. Failed attempts (no leader, a
// leader that died, a lost answer) are retried with back-off until ctx or
// Config.RetryTimeout ends: callers see a pause, not an error. A retry of a
// command whose outcome is unknown is safe because every command carries an
// id (node id, sequence) and the state machine answers a known id with the
// recorded first outcome (dedup.go).
//
// Reads: view first makes the read linearizable. The leader reads its
// commit index, confirms leadership with a quorum (VerifyLeader) and waits
// until its state machine applied that index; a follower asks the leader
// for that index (OpReadIndex) and waits for its own state machine. Raft's
// CommitTimeout is 5ms in a cluster, so an idle follower learns a new
// commit index within that. Restore (a snapshot installed on a lagging or
// wiped node) holds readers off while the database is reloaded.
//
// Membership: Status, AddMember (non-voter or voter; promotes), RemoveMember
// work from any node (forwarded to the leader) and over RPC (RemoteStatus,
// RemoteAddMember, RemoteRemoveMember). Close on a leader with other voters
// hands leadership over first (LeadershipTransfer).
//
// Garbage and orphans: every node's pins are asked over RPC (OpPins,
// ClusterPins; a member that does not answer fails the call, so the
// collector skips the pass). Purge asks every node whether the inode is
// open (OpIsOpen) and keeps an orphan that is open anywhere; a node that
// cannot be asked fails the purge. The leader's collector purges the
// orphans left, so an orphan unlinked on A while open on B is purged after
// B closes it. Residual race, accepted: B could open an orphan by inode
// number (from its kernel cache) between the question and the purge.
//
// Change notification: with Config.OnChange set, the state machine reports
// after each batch what every command changed (inodes, entries added or
// removed) with the node that proposed it, so that the file system can
// invalidate kernel caches for other nodes' changes. A snapshot Restore
// reports nothing; the kernel's short cache timeouts cover it.
//
// # Semantics
//
// Directory nlink is 2 plus the number of subdirectories; Attr.Parent of a
// directory is kept for rename loop checks (EINVAL for a move into its own
// subtree). Unlinking the last link of a non-directory makes it an orphan:
// readable by ino (GetAttr, Blocks) until Purge turns its blocks into
// garbage and deletes it. Rmdir, and rename over an empty directory, delete
// at once. Blocks replaced by CommitWrite, dropped by truncation or freed by
// Purge go on the garbage list with the Raft index that freed them.
package meta
