// Package kv is the KV interface of a datenlord node: linearizable
// key-value access to the Raft-replicated state, in its own keyspace,
// speaking etcd's v3 gRPC API so that etcdctl and go.etcd.io/etcd/client/v3
// work unchanged.
//
// Machine is the deterministic state machine that meta replicates
// (meta.Config.KV): write requests (Put, DeleteRange, Txn, Compaction,
// LeaseGrant, LeaseRevoke) are etcd's InternalRaftRequest, proposed with
// meta.Service.ApplyKV (forwarded to the leader and deduplicated across
// retries like every meta command) and applied in the state machine's
// Badger transaction. The data model is etcd's: one global revision,
// per key create and mod revisions, version and lease, and an event log
// by revision (HistoryRevisions kept; older revisions are compacted) that
// serves watches and reads at past revisions.
//
// Server serves the gRPC API: Range reads with a ReadIndex
// (meta.Service.ViewKV) unless serializable; watches read the local event
// log after each commit (any node serves them); leases expire on the
// leader's clock (see lease.go); with credentials, etcd authentication
// with stateless tokens (auth.go).
package kv
