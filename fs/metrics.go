package fs

import (
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/prometheus/client_golang/prometheus"
)

// op indexes the FUSE operations that are measured.
type op int

const (
	opLookup op = iota
	opGetAttr
	opSetAttr
	opMknod
	opMkdir
	opUnlink
	opRmdir
	opRename
	opLink
	opSymlink
	opReadlink
	opAccess
	opGetXAttr
	opListXAttr
	opSetXAttr
	opRemoveXAttr
	opCreate
	opOpen
	opRead
	opWrite
	opFlush
	opFsync
	opRelease
	opLseek
	opFallocate
	opOpenDir
	opReadDir
	opReadDirPlus
	opReleaseDir
	opFsyncDir
	opStatFs
	numOps
)

var opNames = [numOps]string{
	"lookup", "getattr", "setattr", "mknod", "mkdir", "unlink", "rmdir", "rename",
	"link", "symlink", "readlink", "access", "getxattr", "listxattr", "setxattr",
	"removexattr", "create", "open", "read", "write", "flush", "fsync", "release",
	"lseek", "fallocate", "opendir", "readdir", "readdirplus", "releasedir",
	"fsyncdir", "statfs",
}

// metrics counts FUSE operations. The label children are resolved once,
// so observing an operation costs two atomic adds and no map lookup.
type metrics struct {
	ok       [numOps]prometheus.Counter
	errno    [numOps]prometheus.Counter
	eio      [numOps]prometheus.Counter
	duration [numOps]prometheus.Observer
	// readahead counts block prefetches started for sequential readers.
	readahead prometheus.Counter
}

// newMetrics registers the metrics with reg; nil reg gives nil metrics,
// which observe nothing.
func newMetrics(reg prometheus.Registerer) *metrics {
	if reg == nil {
		return nil
	}
	ops := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "datenlord_fuse_ops_total",
		Help: "FUSE operations served, by operation and outcome (ok, errno: a POSIX error such as ENOENT, eio: an internal or I/O error).",
	}, []string{"op", "outcome"})
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "datenlord_fuse_op_duration_seconds",
		Help:    "Latency of FUSE operations.",
		Buckets: prometheus.ExponentialBuckets(10e-6, 4, 10),
	}, []string{"op"})
	ra := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "datenlord_readahead_blocks_total",
		Help: "Blocks prefetched ahead of sequential readers.",
	})
	reg.MustRegister(ops, dur, ra)
	m := &metrics{readahead: ra}
	for i := range numOps {
		m.ok[i] = ops.WithLabelValues(opNames[i], "ok")
		m.errno[i] = ops.WithLabelValues(opNames[i], "errno")
		m.eio[i] = ops.WithLabelValues(opNames[i], "eio")
		m.duration[i] = dur.WithLabelValues(opNames[i])
	}
	return m
}

// readaheadStarted counts one block prefetch.
func (m *metrics) readaheadStarted() {
	if m != nil {
		m.readahead.Inc()
	}
}

// done records one operation; use as defer fs.m.done(opX, time.Now(), &code).
func (m *metrics) done(o op, start time.Time, code *fuse.Status) {
	if m == nil {
		return
	}
	m.duration[o].Observe(time.Since(start).Seconds())
	switch *code {
	case fuse.OK:
		m.ok[o].Inc()
	case fuse.EIO:
		m.eio[o].Inc()
	default:
		m.errno[o].Inc()
	}
}
