package iouring

import (
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// sqThreadIdleMS is how long the kernel's SQ polling thread keeps polling
// after the last SQE before it sleeps (io_uring_params.sq_thread_idle).
const sqThreadIdleMS = 2

// newSQPollUring sets up a ring with IORING_SETUP_SQPOLL (KindUringSQPoll).
//
// A kernel thread polls the SQ, so a request costs no system call to
// submit, and the kernel runs the task work that completes reads and
// writes on that thread, never on a Go thread. Completions are reaped by a
// goroutine that waits for the ring's registered eventfd through the Go
// netpoller, and handed to the waiting callers from there. Nothing is
// locked to an OS thread, and any goroutine may submit.
//
// The price is a kernel thread that spins on a CPU while requests keep
// coming, and for sqThreadIdleMS after the last one; it then sleeps, and
// the next submitter wakes it with io_uring_enter(IORING_ENTER_SQ_WAKEUP).
func newSQPollUring(cfg Config, log *slog.Logger) (*uringEngine, error) {
	p := ioUringParams{flags: setupClamp | setupSQPoll, sqThreadIdle: sqThreadIdleMS}
	fd, err := ioUringSetup(cfg.Entries, &p)
	if err != nil {
		return nil, fmt.Errorf("io_uring_setup(%d entries, SQPOLL): %w", cfg.Entries, err)
	}
	e := &uringEngine{
		ringFD: fd, evFD: -1, log: log, sqpoll: true,
		closing: make(chan struct{}), reaperDone: make(chan struct{}),
	}
	fail := func(err error) (*uringEngine, error) {
		e.unmap()
		_ = unix.Close(fd)
		if e.evFile != nil {
			_ = e.evFile.Close()
		}
		return nil, err
	}
	if err := e.mapRings(&p); err != nil {
		return fail(err)
	}
	e.initSlots()
	if err := e.registerEventFD(); err != nil {
		return fail(err)
	}
	go e.sqpollReap()
	return e, nil
}

// sqpollKickLocked wakes the SQ thread if it sleeps (e.mu held). The tail
// was published by an atomic store and the flags are read by an atomic
// load: Go's atomics are sequentially consistent, the full barrier the
// kernel's protocol asks for between the two.
func (e *uringEngine) sqpollKickLocked() {
	e.pending = 0
	if atomic.LoadUint32(e.sqFlags)&sqNeedWakeup == 0 {
		return
	}
	if _, err := ioUringEnter(e.ringFD, 0, 0, enterSQWakeup); err != nil && !errors.Is(err, unix.EINTR) {
		e.log.Error("io_uring SQ thread wakeup failed", "err", err)
	}
}

// sqpollReap delivers completions until Close has asked it to stop and
// nothing is in flight. The eventfd is signalled for every CQE posted, so
// a CQE that lands between the reap and the read makes the read return.
func (e *uringEngine) sqpollReap() {
	defer close(e.reaperDone)
	var buf [8]byte
	for {
		head := atomic.LoadUint32(e.cqHead)
		tail := atomic.LoadUint32(e.cqTail) // acquire: CQEs up to tail are written
		for ; head != tail; head++ {
			c := (*cqe)(unsafe.Add(e.cqes, uintptr(head&e.cqMask)*unsafe.Sizeof(cqe{})))
			if ud, res := c.userData, c.res; ud&tagCancel == 0 {
				e.reqs[ud].done <- res
				e.inflight.Add(-1)
			}
		}
		atomic.StoreUint32(e.cqHead, head) // release the CQ entries to the kernel
		if e.sqStop.Load() && e.inflight.Load() == 0 {
			return
		}
		if _, err := e.evFile.Read(buf[:]); err != nil {
			e.log.Error("io_uring eventfd read failed; polling", "err", err)
			time.Sleep(100 * time.Microsecond)
		}
	}
}

// closeSQPoll is Close in SQPOLL mode, after new requests are refused: the
// reaper stops once the requests in flight have completed.
func (e *uringEngine) closeSQPoll() error {
	e.sqStop.Store(true)
	writeEventFD(e.log, e.evFD)
	<-e.reaperDone
	e.mu.Lock()
	e.ringGone = true
	e.mu.Unlock()
	e.unmap()
	err := unix.Close(e.ringFD) // stops the SQ thread
	_ = e.evFile.Close()
	if err != nil {
		return fmt.Errorf("iouring close ring fd %d: %w", e.ringFD, err)
	}
	return nil
}
