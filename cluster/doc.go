// Package cluster holds the acceptance tests of the replicated metadata
// cluster (issue 4, DESIGN.md section 5): real datenlord-node processes with
// real FUSE mounts, killed with SIGKILL, restarted, partitioned with
// nftables inside network namespaces, and checked for linearizability with
// porcupine. The reusable parts live in the sub-packages: clustertest (the
// harness) and lincheck (the model, the recorder and the checker).
//
// The tests need root, /dev/fuse, ip(8), nsenter(1) and nft(8); run
// ci/cluster-deps.sh once to install what is missing. The benchmark
// (go test -run '^$' -bench . ./cluster/) reports creates/s and stats/s of
// a 3-voter cluster next to a single node.
package cluster
