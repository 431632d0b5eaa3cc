package iouring

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// localWorkBatch bounds the completions the kernel runs per
// io_uring_enter(GETEVENTS) on a DEFER_TASKRUN ring: since Linux 6.13 it runs
// at most max(20, min_complete) of them (IO_LOCAL_TW_DEFAULT_MAX) and keeps
// the rest without signalling the eventfd again. A round that reaps at least
// this many enters the ring again before waiting.
const localWorkBatch = 16

// strandedWorkPoll bounds how long the owner waits on the eventfd while
// requests are in flight, in case a kernel kept back task work at a lower
// bound than localWorkBatch: the next round runs it.
const strandedWorkPoll = 2 * time.Millisecond

// newOwnerUring sets up a ring with IORING_SETUP_SINGLE_ISSUER and
// IORING_SETUP_DEFER_TASKRUN on a new goroutine locked to its OS thread,
// which then owns the ring: it is the only task that ever calls
// io_uring_enter or io_uring_register on it. An error wrapping EINVAL
// means the kernel does not know the flags (before 6.1).
func newOwnerUring(cfg Config, log *slog.Logger) (*uringEngine, error) {
	e := &uringEngine{
		ringFD: -1, wakeFD: -1, log: log, owner: true,
		closing: make(chan struct{}), kick: make(chan struct{}, 1),
		calls: make(chan func(), 1), ownerDone: make(chan struct{}),
	}
	ready := make(chan error, 1)
	go e.ownerLoop(cfg, ready)
	if err := <-ready; err != nil {
		return nil, err
	}
	return e, nil
}

// ownerSetup runs on the owner thread: the ring's submitter task is the
// one that creates it, and registers its eventfd.
func (e *uringEngine) ownerSetup(cfg Config) error {
	p := ioUringParams{flags: setupClamp | setupSubmitAll | setupSingleIssuer | setupDeferTaskrun}
	fd, err := ioUringSetup(cfg.Entries, &p)
	if err != nil {
		return fmt.Errorf("io_uring_setup(%d entries, SINGLE_ISSUER|DEFER_TASKRUN): %w", cfg.Entries, err)
	}
	e.ringFD = fd
	fail := func(err error) error {
		e.unmap()
		_ = unix.Close(fd)
		if e.wakeFile != nil {
			_ = e.wakeFile.Close()
		}
		return err
	}
	if err := e.mapRings(&p); err != nil {
		return fail(err)
	}
	e.initSlots()
	// The eventfd the owner waits on, through the Go netpoller: the kernel
	// signals it when completions are ready to run (with DEFER_TASKRUN, as
	// soon as task work is queued); callers write it to hand over new SQEs.
	if err := e.registerEventFD(); err != nil {
		return fail(err)
	}
	return nil
}

// wakeOwnerLocked wakes the owner if it sleeps (e.mu held, so that Close
// cannot close the eventfd under us). At most one waker per sleep pays
// for it: the others see ownerRunning.
func (e *uringEngine) wakeOwnerLocked() {
	switch {
	case e.state.CompareAndSwap(ownerIdle, ownerRunning):
		select {
		case e.kick <- struct{}{}:
		default:
		}
	case e.state.CompareAndSwap(ownerWaiting, ownerRunning):
		one := uint64(1)
		if _, err := unix.Write(e.wakeFD, (*[8]byte)(unsafe.Pointer(&one))[:]); err != nil {
			e.log.Error("io_uring wake eventfd write failed", "err", err)
		}
	}
}

// onOwner runs f on the owner thread and waits for it.
func (e *uringEngine) onOwner(f func()) {
	done := make(chan struct{})
	e.calls <- func() { f(); close(done) } // queued first: a wake then finds it
	e.mu.Lock()
	e.wakeOwnerLocked()
	e.mu.Unlock()
	<-done
}

// ownerLoop submits and reaps for every caller, from one locked OS thread.
//
// With DEFER_TASKRUN the kernel runs the task work that completes reads
// and writes only when this thread calls io_uring_enter(GETEVENTS), never
// on another thread, so no caller's thread — possibly blocked reading this
// process's own FUSE mount — is ever needed for a completion. Each round
// is one non-blocking system call: submit what callers queued and run the
// completions that are ready; then the CQ is reaped.
//
// The owner never sleeps in the kernel. It waits for the eventfd through
// the Go netpoller, so that while it waits its P runs the goroutines it
// just woke: a thread blocked in a system call keeps its P until sysmon
// takes it back (20 µs to 10 ms later), and with GOMAXPROCS=1 every caller
// waited for that (measured: 3.5-4x fewer IOPS at queue depth 32). The
// kernel signals the eventfd when completions are ready to run; a caller
// that queues an SQE writes it only when the owner waits (ownerWaiting),
// and with nothing in flight the owner parks on e.kick instead.
func (e *uringEngine) ownerLoop(cfg Config, ready chan<- error) {
	runtime.LockOSThread() // never unlocked: the thread ends with the loop
	if err := e.ownerSetup(cfg); err != nil {
		ready <- err
		return
	}
	ready <- nil
	defer close(e.ownerDone)
	var buf [8]byte
	for {
		select {
		case f := <-e.calls:
			f()
		default:
		}
		e.mu.Lock()
		n := e.pending
		e.pending = 0
		if n == 0 && e.inflight.Load() == 0 {
			if e.stopping {
				e.mu.Unlock()
				return
			}
			e.state.Store(ownerIdle)
			e.mu.Unlock()
			select {
			case <-e.kick:
			case f := <-e.calls:
				f()
			}
			e.state.Store(ownerRunning)
			continue
		}
		e.mu.Unlock()
		done, err := ioUringEnter(e.ringFD, n, 0, enterGetEvents)
		if done < 0 {
			done = 0
		}
		if uint32(done) < n {
			e.mu.Lock()
			e.pending += n - uint32(done)
			e.mu.Unlock()
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			if !errors.Is(err, unix.EAGAIN) && !errors.Is(err, unix.EBUSY) {
				e.log.Error("io_uring_enter failed; retrying", "err", err)
			}
			// Reap below frees CQ room; back off so a persistent error does not spin.
			time.Sleep(50 * time.Microsecond)
		}
		if e.ownerReap() >= localWorkBatch {
			continue // the kernel may have kept completions back for the next call
		}
		e.mu.Lock()
		if e.pending > 0 || len(e.calls) > 0 || e.inflight.Load() == 0 {
			e.mu.Unlock()
			continue
		}
		// Callers that queue an SQE from now on see ownerWaiting and write
		// the eventfd; completions signal it from the kernel.
		e.state.Store(ownerWaiting)
		e.mu.Unlock()
		e.ownerWait(buf[:])
		e.state.Store(ownerRunning)
	}
}

// ownerWait waits for the eventfd, at most strandedWorkPoll.
func (e *uringEngine) ownerWait(buf []byte) {
	if err := e.wakeFile.SetReadDeadline(time.Now().Add(strandedWorkPoll)); err != nil {
		e.log.Error("io_uring eventfd deadline", "err", err)
	}
	_, err := e.wakeFile.Read(buf)
	switch {
	case err == nil, errors.Is(err, os.ErrDeadlineExceeded):
	default:
		e.log.Error("io_uring eventfd read failed; polling", "err", err)
		time.Sleep(100 * time.Microsecond)
	}
}

// ownerReap delivers the completions in the CQ (owner thread) and returns
// how many CQEs it consumed.
func (e *uringEngine) ownerReap() int {
	head := atomic.LoadUint32(e.cqHead)
	tail := atomic.LoadUint32(e.cqTail) // acquire: CQEs up to tail are written
	n := 0
	for ; head != tail; head++ {
		c := (*cqe)(unsafe.Add(e.cqes, uintptr(head&e.cqMask)*unsafe.Sizeof(cqe{})))
		if ud, res := c.userData, c.res; ud&tagCancel == 0 {
			e.reqs[ud].done <- res
			e.inflight.Add(-1)
		}
		n++
	}
	atomic.StoreUint32(e.cqHead, head) // release the CQ entries to the kernel
	return n
}

// closeOwner is Close in owner mode.
func (e *uringEngine) closeOwner() error {
	e.regMu.Lock() // no registration in progress: it needs the owner
	e.mu.Lock()
	e.stopping = true
	e.wakeOwnerLocked()
	e.mu.Unlock()
	e.regMu.Unlock()
	<-e.ownerDone
	e.mu.Lock()
	e.ringGone = true
	e.mu.Unlock()
	e.unmap()
	err := unix.Close(e.ringFD)
	_ = e.wakeFile.Close()
	if err != nil {
		return fmt.Errorf("iouring close ring fd %d: %w", e.ringFD, err)
	}
	return nil
}
