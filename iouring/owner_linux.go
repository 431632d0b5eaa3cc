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
// io_uring_enter(GETEVENTS) on a DEFER_TASKRUN ring: since Linux 6.13 at
// most max(20, min_complete) (IO_LOCAL_TW_DEFAULT_MAX); the rest wait for
// the next call without signalling the eventfd again. A round that reaped
// at least this many does not wait in the netpoller.
const localWorkBatch = 16

// strandedWorkPoll bounds a wait in the netpoller, in case a kernel kept
// back completions at a lower bound than localWorkBatch.
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
// one that creates it.
func (e *uringEngine) ownerSetup(cfg Config) error {
	p := ioUringParams{flags: setupClamp | setupSubmitAll | setupSingleIssuer | setupDeferTaskrun}
	fd, err := ioUringSetup(cfg.Entries, &p)
	if err != nil {
		return fmt.Errorf("io_uring_setup(%d entries, SINGLE_ISSUER|DEFER_TASKRUN): %w", cfg.Entries, err)
	}
	e.ringFD = fd
	if err := e.mapRings(&p); err != nil {
		e.unmap()
		_ = unix.Close(fd)
		return err
	}
	// One SQ entry is kept for the wake read, so requests get sqSize-1 slots.
	e.slots = make(chan uint32, e.sqSize)
	e.reqs = make([]request, e.sqSize)
	for i := range e.reqs {
		e.reqs[i].done = make(chan int32, 1)
		if i < int(e.sqSize)-1 {
			e.slots <- uint32(i)
		}
	}
	// A blocking eventfd: io_uring polls it rather than failing with EAGAIN.
	wfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		e.unmap()
		_ = unix.Close(fd)
		return fmt.Errorf("io_uring wake eventfd: %w", err)
	}
	e.wakeFD = wfd
	// The eventfd for waits in the netpoller, signalled by the kernel as
	// soon as completions are queued (DEFER_TASKRUN), but only while the
	// owner enables it (cqEventFDDisabled cleared) for such a wait.
	if err := e.registerEventFD(); err != nil {
		e.unmap()
		_ = unix.Close(fd)
		_ = unix.Close(wfd)
		if e.evFile != nil {
			_ = e.evFile.Close()
		}
		return err
	}
	atomic.StoreUint32(e.cqFlags, atomic.LoadUint32(e.cqFlags)|cqEventFDDisabled)
	e.wakeBuf = new(uint64)
	e.wakePin.Pin(e.wakeBuf)
	e.mu.Lock()
	e.armWakeLocked()
	e.mu.Unlock()
	return nil
}

// armWakeLocked queues the read of the wake eventfd (e.mu held).
func (e *uringEngine) armWakeLocked() {
	e.pushLocked(func(s *sqe) {
		s.opcode = opRead
		s.fd = int32(e.wakeFD)
		s.addr = uint64(uintptr(unsafe.Pointer(e.wakeBuf)))
		s.len = 8
		s.userData = tagWake
	})
	e.wakeArmed = true
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
		writeEventFD(e.log, e.wakeFD)
	case e.state.CompareAndSwap(ownerPolling, ownerRunning):
		writeEventFD(e.log, e.evFD)
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
// process's own FUSE mount — is ever needed for a completion. While
// requests are in flight the loop is one system call per round: submit
// what callers queued and wait for at least one completion. Callers wake it
// only when it sleeps: through e.kick when nothing is in flight, through
// the eventfd (whose read completes the wait) when it waits in the kernel.
//
// A thread blocked in a system call keeps its P until sysmon takes it back
// (20 µs to 10 ms later), so the callers the owner has just woken, queued
// on that P, would wait that long: with GOMAXPROCS=1 the engine did 4x
// fewer IOPS at queue depth 32. So after a round that delivered
// completions, and with GOMAXPROCS=1 whenever requests are in flight, the
// owner waits in the Go netpoller instead (pollRound), on the eventfd
// registered with the ring, and its P runs the callers. Otherwise it waits
// in the kernel, whose wake-up is quicker (a 4 KiB read at queue depth 1:
// about 70 µs against 110-120 µs through the netpoller).
func (e *uringEngine) ownerLoop(cfg Config, ready chan<- error) {
	runtime.LockOSThread() // never unlocked: the thread ends with the loop
	if err := e.ownerSetup(cfg); err != nil {
		ready <- err
		return
	}
	ready <- nil
	defer close(e.ownerDone)
	var buf [8]byte
	delivered := 0 // completions the last round handed to callers
	oneP := runtime.GOMAXPROCS(0) == 1
	for {
		select {
		case f := <-e.calls:
			f()
		default:
		}
		e.mu.Lock()
		if e.wakeRearm && !e.stopping && e.tail-atomic.LoadUint32(e.sqHead) < e.sqSize {
			e.wakeRearm = false
			e.armWakeLocked()
		}
		n := e.pending
		e.pending = 0
		busy := e.inflight.Load() > 0
		if n == 0 && !busy {
			if e.stopping {
				e.mu.Unlock()
				e.ownerStop()
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
			delivered = 0
			oneP = runtime.GOMAXPROCS(0) == 1
			continue
		}
		if busy && (delivered > 0 || oneP) && len(e.calls) == 0 && !e.stopping {
			// The callers just woken are queued on this thread's P: wait
			// in the netpoller, which lets the P run them, not in the kernel.
			e.state.Store(ownerPolling)
			e.mu.Unlock()
			delivered = e.pollRound(n, buf[:])
			e.state.Store(ownerRunning)
			continue
		}
		var minComplete, flags uint32
		if busy {
			flags = enterGetEvents // runs the deferred task work: reaps what is done
			e.state.Store(ownerWaiting)
			// onOwner queues its call before taking mu to wake us, so after
			// this check under mu it is sure to see ownerWaiting.
			if len(e.calls) == 0 {
				minComplete = 1
			}
		}
		e.mu.Unlock()
		e.ownerEnter(n, minComplete, flags)
		e.state.Store(ownerRunning)
		delivered, _ = e.ownerReap()
	}
}

// ownerEnter calls io_uring_enter on the owner thread and puts the SQEs
// the kernel did not take back into e.pending. It reports whether all n
// were taken.
func (e *uringEngine) ownerEnter(n, minComplete, flags uint32) bool {
	done, err := ioUringEnter(e.ringFD, n, minComplete, flags)
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
		// The reap that follows frees CQ room; back off so a persistent
		// error does not spin.
		time.Sleep(50 * time.Microsecond)
	}
	return uint32(done) >= n
}

// pollRound is a round of the owner that waits in the netpoller (state
// ownerPolling, e.mu not held): it enables the ring's eventfd, submits n
// SQEs and runs the completions that are ready without blocking, reaps,
// and then waits for the eventfd (a completion queued, or a caller's
// write), unless the kernel may have kept completions back. It returns
// the completions it delivered.
func (e *uringEngine) pollRound(n uint32, buf []byte) int {
	atomic.StoreUint32(e.cqFlags, atomic.LoadUint32(e.cqFlags)&^cqEventFDDisabled)
	defer func() { atomic.StoreUint32(e.cqFlags, atomic.LoadUint32(e.cqFlags)|cqEventFDDisabled) }()
	// Completions queued while the eventfd was disabled signalled nothing,
	// and later ones do not either while those wait: run them now.
	all := e.ownerEnter(n, 0, enterGetEvents)
	delivered, reaped := e.ownerReap()
	if reaped >= localWorkBatch || !all {
		return delivered // more may be ready now: no wait
	}
	if err := e.evFile.SetReadDeadline(time.Now().Add(strandedWorkPoll)); err != nil {
		e.log.Error("io_uring eventfd deadline", "err", err)
	}
	if _, err := e.evFile.Read(buf); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		e.log.Error("io_uring eventfd read failed; polling", "err", err)
		time.Sleep(100 * time.Microsecond)
	}
	return delivered
}

// ownerReap delivers the completions in the CQ (owner thread). It
// returns how many it handed to callers and how many CQEs it consumed.
func (e *uringEngine) ownerReap() (delivered, reaped int) {
	head := atomic.LoadUint32(e.cqHead)
	tail := atomic.LoadUint32(e.cqTail) // acquire: CQEs up to tail are written
	rearm := false
	for ; head != tail; head++ {
		reaped++
		c := (*cqe)(unsafe.Add(e.cqes, uintptr(head&e.cqMask)*unsafe.Sizeof(cqe{})))
		ud, res := c.userData, c.res
		switch {
		case ud&tagCancel != 0:
		case ud == tagWake:
			e.wakeArmed = false
			rearm = true
		default:
			e.reqs[ud].done <- res
			e.inflight.Add(-1)
			delivered++
		}
	}
	atomic.StoreUint32(e.cqHead, head) // release the CQ entries to the kernel
	if rearm {
		e.mu.Lock()
		switch {
		case e.stopping:
		case e.tail-atomic.LoadUint32(e.sqHead) >= e.sqSize:
			e.wakeRearm = true // the SQ is full (cancels): retry next round
		default:
			e.armWakeLocked()
		}
		e.mu.Unlock()
	}
	return delivered, reaped
}

// ownerStop cancels the wake read and waits for its completion, so that
// its buffer can be unpinned; nothing else is in flight.
func (e *uringEngine) ownerStop() {
	if e.wakeArmed {
		e.mu.Lock()
		e.pushLocked(func(s *sqe) {
			s.opcode = opAsyncCancel
			s.fd = -1
			s.addr = tagWake
			s.userData = tagCancel | tagWake
		})
		n := e.pending
		e.pending = 0
		e.mu.Unlock()
		for i := 0; e.wakeArmed && i < 1000; i++ {
			if _, err := ioUringEnter(e.ringFD, n, 1, enterGetEvents); err != nil && !errors.Is(err, unix.EINTR) {
				e.log.Error("io_uring wait for the wake read's cancellation failed", "err", err)
				time.Sleep(time.Millisecond)
			}
			n = 0
			_, _ = e.ownerReap()
		}
	}
	if !e.wakeArmed {
		e.wakePin.Unpin()
	} // else leave it pinned: the kernel may still write it
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
	_ = unix.Close(e.wakeFD)
	_ = e.evFile.Close()
	if err != nil {
		return fmt.Errorf("iouring close ring fd %d: %w", e.ringFD, err)
	}
	return nil
}
