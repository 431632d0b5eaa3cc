// Package clustertest starts real datenlord-node clusters for tests: one
// process per node, each with its own data dir and FUSE mount, all sharing
// one store directory and one cluster secret, and injects the faults the
// cluster must survive.
//
// # Structure
//
// [Main] builds the binary once per test process (call it from TestMain).
// [New] starts a [Cluster] of N nodes and waits until every node is mounted
// and all agree on a leader. A [Node] is one process: [Node.Kill] is a crash
// (SIGKILL, then the dead FUSE mount is lazily unmounted), [Node.Stop] a
// graceful shutdown (SIGTERM, exit 0, unmounted), [Node.Start] starts it
// again on the same data dir. Everything a test starts is torn down by
// t.Cleanup, also when the test fails or panics; node processes also die
// with the test process (PR_SET_PDEATHSIG), and a later run sweeps the
// namespaces and dead mounts a killed test process left behind.
//
// # Partitions
//
// With [Options.Netns] every node runs in its own network namespace,
// connected by a veth pair to a bridge in a further namespace; the nodes
// listen on addresses of a private range that exists only inside those
// namespaces. Processes are started with nsenter --net (not ip netns exec,
// which would also unshare the mount namespace and hide the FUSE mount
// from the test). [Cluster.Partition] installs nftables drop rules in each
// node's namespace so that only nodes of one group reach each other;
// [Cluster.Heal] removes them. Dropping (not rejecting) packets is a real
// partition: established connections hang until they time out.
//
// # Logs
//
// Each node's stdout and stderr go to a file in the cluster's directory;
// when the test fails the tail of every log is written to the test log.
// Set DATENLORD_CLUSTER_KEEP=1 to keep the directory (logs, data dirs).
package clustertest
