// Package bench holds the benchmarks the project is tuned around. Every
// workload runs against a baseline measured in the same run (the raw disk
// under the same directory tree, memcpy, a raw network round trip, ...), so
// that figures read as ratios to what the machine can do.
//
// Run them with `make bench`, or directly:
//
//	go test -run '^$' -bench . -benchtime 1x ./bench/
//
// DATENLORD_BENCH_BYTES and DATENLORD_BENCH_FILES shrink the workloads for
// a quick look.
package bench
