// Package policysim compares cache eviction policies on synthetic page
// traces against Belady's offline optimum (MIN).
//
// A Trace is a sequence of page references, each with the Access hint the
// file system would give the cache (random, or sequential for a detected
// scan). Simulate drives a cache.Policy the way the memory tier does: a
// hit Touches the page's slot, a miss on a full cache asks Victim, Removes
// it and Inserts the new page in its slot (InsertKey for a
// cache.KeyedPolicy). Belady replays the same trace with full knowledge of
// the future, evicting the page whose next use is farthest away; no
// demand-paging policy can beat it, which the tests check.
//
// Run produces the hit-ratio table (trace x cache size x policy, plus
// Belady) as plain rows, and WriteTable formats them; the node binary
// exposes the same table as a bench subcommand.
//
//	go test -run TestPolicyTable -v ./cache/policysim/
package policysim
