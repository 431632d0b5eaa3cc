// Package iouring is the block I/O engine under the local disk tier and the
// local store: positioned reads and writes, fsync, and registered (fixed)
// buffers for O_DIRECT, submitted through Linux io_uring, with a plain
// pread/pwrite fallback ("psync") behind the same Engine interface.
//
// # Engines
//
// Open(Config{Kind: ...}) returns an Engine:
//
//   - "uring": one io_uring instance shared by every caller. Fails with a
//     clear error (wrapping the errno of io_uring_setup) when the kernel
//     refuses: ENOSYS (no io_uring), EPERM (kernel.io_uring_disabled=2, or
//     a seccomp filter, as in default Docker profiles), ENOMEM (memlock).
//   - "uring-sqpoll": "uring" with IORING_SETUP_SQPOLL: a kernel thread
//     polls the submission queue, so a request needs no system call and the
//     kernel completes it on that thread; a reaper goroutine waits for the
//     ring's eventfd through the netpoller. Nothing is locked to an OS
//     thread. The kernel thread keeps a CPU busy while I/O flows and for
//     2 ms after; "auto" never picks it.
//   - "psync": pread, pwrite, fsync and fdatasync through golang.org/x/sys/unix,
//     one blocking system call per request on the caller's thread.
//   - "auto" (or ""): "uring" when it can be set up, else "psync", logging
//     the reason at Warn once, so an operator sees why the node is slower.
//
// All engines give the same results for the same calls (the tests run one
// table against each), so a caller never branches on Name.
//
// # Why not giouring
//
// go.mod pins github.com/pawelgaczynski/giouring, which is unmaintained and
// has a bug in Ring.PeekBatchCQE: it computes the end of the batch
// (last := head + count) before clamping count to the completions that are
// ready, so a caller asking for more CQEs than are ready walks past the CQ
// tail and reads stale entries as completions, completing requests twice or
// with garbage results. Rather than wrap a library around its bugs, this
// package speaks the kernel ABI directly on golang.org/x/sys/unix (three
// system calls and three mmaps, in sys_linux.go and uring_linux.go): ring
// head and tail are read and published with sync/atomic (acquire/release,
// as liburing does), completions are reaped by a loop that stops at the
// tail it loaded, and no giouring type or behaviour leaks to callers.
//
// # Submission and completion
//
// Callers from many goroutines share the ring. A request first takes one of
// the request slots (the in-flight bound, which also keeps the completion
// queue from overflowing) and writes its SQE under a mutex. Only one
// goroutine, the ring owner, locked to its own OS thread, ever enters the
// ring: the ring is set up (on that thread) with IORING_SETUP_SINGLE_ISSUER
// and IORING_SETUP_DEFER_TASKRUN (Linux 6.1), and the owner both submits
// and reaps. While requests are in flight it loops on one system call per
// round, io_uring_enter(to_submit = whatever callers queued meanwhile,
// min_complete = 1, GETEVENTS), then hands each completion to the goroutine
// waiting for it (user_data is the request slot), so concurrent callers
// share system calls and completions are batched. Callers wake the owner
// only when it sleeps, and at most one of them per sleep: when nothing is
// in flight it is parked on a channel; when it waits in the kernel, a
// write to an eventfd (whose read the owner keeps queued on the ring)
// completes its wait, so a new request never waits behind a slow one.
//
// A thread blocked in a system call keeps its P until sysmon takes it
// back, 20 µs to 10 ms later, and the goroutines the owner has just woken
// are queued on that P: with GOMAXPROCS=1 (a container with one CPU) that
// cost 3.5-4x of the IOPS at queue depth 32. So after a round that woke
// callers, and with GOMAXPROCS=1 whenever requests are in flight, the owner
// waits in the Go netpoller instead, on a second eventfd registered with
// the ring (IORING_REGISTER_EVENTFD): the kernel signals it as soon as a
// completion is queued, callers write it to hand over SQEs, and the
// owner's P runs the callers meanwhile. The kernel signals it only while
// the owner has it enabled (IORING_CQ_EVENTFD_DISABLED cleared). Since
// Linux 6.13 one io_uring_enter runs at most 20 completions and keeps the
// rest without a new signal, so a round that reaped many does not wait,
// and the wait is bounded (2 ms) in case a kernel keeps back more.
// io_uring_register runs on the owner thread too (SINGLE_ISSUER requires
// it), and so does the ring's setup.
//
// Why one owner thread is a correctness rule, not a tuning choice: the
// kernel completes reads and writes with task work. Without DEFER_TASKRUN
// that task work runs on the submitting thread, and when callers submitted
// from arbitrary Go threads, a thread could block reading this process's
// own FUSE mount (a killable wait where task work cannot run) while the
// FUSE request waited for that very completion: a deadlock, seen in
// TestDiskTierEngines. With DEFER_TASKRUN the task work runs only inside
// the owner's io_uring_enter(GETEVENTS), and the owner blocks nowhere else
// than in that call or on its channel, so completions never depend on a
// caller's thread. This is also about twice as fast as the previous design
// (a submitter thread plus a separate reaper thread, woken per batch): one
// thread, one system call per round, no cross-thread task work.
//
// On kernels without DEFER_TASKRUN (io_uring_setup fails with EINVAL; the
// reason is logged at Info) the engine falls back to that previous design:
// a dedicated locked submitter thread that does nothing but
// io_uring_enter(to_submit), which only ever sleeps interruptibly so its
// task work always runs, and a reaper goroutine waiting in
// io_uring_enter(GETEVENTS).
//
// # Buffers, cancellation and Close
//
// A buffer passed to ReadAt or WriteAt belongs to the kernel until its
// completion arrives: it is pinned (runtime.Pinner) so that the Go runtime
// cannot move or free it, and no method returns before the kernel is done
// with it. When ctx is cancelled after submission, the engine asks the
// kernel to cancel the request (IORING_OP_ASYNC_CANCEL, best effort: block
// I/O in flight usually cannot be cancelled) and still waits for its
// completion; the call then returns the real result if the I/O finished,
// or an error wrapping ctx.Err() if it was cancelled. A ctx that is done
// before submission returns at once with nothing submitted.
//
// Close refuses new requests (ErrClosed), waits for the ones in flight to
// complete, and then tears the ring down.
//
// # Fixed buffers and O_DIRECT
//
// O_DIRECT needs buffers, offsets and lengths aligned to the logical block
// size (4 KiB covers every device). AllocAligned returns page-aligned memory
// mmap'd outside the Go heap (never moved, never scanned), and
// Engine.RegisterBuffers registers such memory with the kernel once, so that
// ReadFixed and WriteFixed skip the per-I/O page pinning and mapping
// (IORING_OP_READ_FIXED/WRITE_FIXED). The psync engine accepts the same
// calls and does plain pread/pwrite. OpenDirect opens a file with O_DIRECT
// and, on file systems that refuse it (tmpfs), falls back to buffered I/O
// and says so.
//
// # Errors
//
// Errors name the operation, fd, offset and length and wrap the errno, so
// errors.Is(err, syscall.EBADF) (or ENOSPC, EIO) works with both engines.
package iouring
