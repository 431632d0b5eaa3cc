package iouring

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// user_data values: a request slot id, or one of these tags on the
// engine's own SQEs, whose completions the reaper does not deliver.
const (
	tagCancel uint64 = 1 << 62 // | slot id: an async cancel
	tagStop   uint64 = 1 << 63 // the NOP Close sends to stop the reaper
	tagWake   uint64 = 1 << 61 // the owner's read of its wake eventfd
)

// Owner states (uringEngine.state), in owner mode.
const (
	ownerRunning int32 = iota // will look at the SQ again before sleeping
	ownerIdle                 // parked on e.kick: nothing in flight
	ownerWaiting              // in io_uring_enter(GETEVENTS): wake by writing wakeFD
	ownerPolling              // waiting for evFile in the netpoller: wake by writing evFD
)

// uringEngine shares one io_uring instance between every caller. See the
// package doc for the submission and completion design.
type uringEngine struct {
	ringFD int
	log    *slog.Logger

	ringMem [][]byte // mmaps to undo at Close
	sqes    unsafe.Pointer
	sqHead  *uint32 // written by the kernel
	sqTail  *uint32 // written by us, under mu
	sqMask  uint32
	sqSize  uint32
	cqHead  *uint32 // written by the reaper
	cqTail  *uint32 // written by the kernel
	cqMask  uint32
	cqes    unsafe.Pointer

	// slots holds the free request ids: taking one bounds the requests in
	// flight to the SQ size, so neither queue can overflow.
	slots   chan uint32
	reqs    []request
	closing chan struct{} // closed by Close: wakes callers waiting for a slot

	mu       sync.Mutex
	closed   bool   // no new requests
	ringGone bool   // the ring is being torn down: no SQE may be written
	tail     uint32 // our copy of *sqTail
	pending  uint32 // SQEs published but not yet passed to io_uring_enter
	regs     [][]byte

	// kick (capacity 1) wakes the submitter goroutine, which owns the one
	// OS thread that calls io_uring_enter to submit; closed by Close.
	kick          chan struct{}
	submitterDone chan struct{}

	inflight   atomic.Int64 // requests whose completion has not been reaped
	reaperDone chan struct{}

	// Owner mode (IORING_SETUP_SINGLE_ISSUER|DEFER_TASKRUN): one goroutine,
	// locked to its OS thread, is the only task that ever enters the ring.
	owner     bool
	state     atomic.Int32 // ownerRunning, ownerIdle, ownerWaiting or ownerPolling
	wakeFD    int          // eventfd the owner keeps a read armed on
	wakeBuf   *uint64      // that read's buffer (pinned while armed)
	wakePin   runtime.Pinner
	wakeArmed bool          // owner only
	wakeRearm bool          // under mu: the wake read is due once the SQ has room
	cqFlags   *uint32       // the CQ ring's flags (cqEventFDDisabled)
	stopping  bool          // under mu: Close asked the owner to finish
	calls     chan func()   // work that must run on the owner thread
	regMu     sync.Mutex    // serialises RegisterBuffers; guards regs with mu
	ownerDone chan struct{} // closed when the owner has stopped

	// SQPOLL mode (KindUringSQPoll): a kernel thread polls the SQ and a
	// reaper goroutine waits for evFile.
	sqpoll  bool
	sqFlags *uint32     // the SQ ring's flags (sqNeedWakeup)
	sqStop  atomic.Bool // Close asked the reaper to finish

	// The eventfd registered with the ring (owner and SQPOLL modes): the
	// kernel signals it when completions are ready; read through the
	// netpoller.
	evFD   int
	evFile *os.File
}

// request is the state of one request slot.
type request struct {
	done   chan int32 // capacity 1: the completion's res
	pinner runtime.Pinner
}

var _ Engine = (*uringEngine)(nil)

func newUring(cfg Config, log *slog.Logger) (*uringEngine, error) {
	if cfg.setupErr != nil {
		return nil, fmt.Errorf("io_uring_setup: %w", cfg.setupErr)
	}
	if !cfg.noOwner {
		oe, err := newOwnerUring(cfg, log)
		if err == nil {
			return oe, nil
		}
		if !errors.Is(err, unix.EINVAL) {
			return nil, err
		}
		log.Info("io_uring: SINGLE_ISSUER|DEFER_TASKRUN refused (kernel < 6.1?); using a dedicated submitter thread and a reaper", "err", err)
	}
	var p ioUringParams
	p.flags = setupClamp | setupSubmitAll
	fd, err := ioUringSetup(cfg.Entries, &p)
	if errors.Is(err, unix.EINVAL) { // SUBMIT_ALL needs 5.18
		p = ioUringParams{flags: setupClamp}
		fd, err = ioUringSetup(cfg.Entries, &p)
	}
	if err != nil {
		return nil, fmt.Errorf("io_uring_setup(%d entries): %w", cfg.Entries, err)
	}
	e := &uringEngine{
		ringFD: fd, log: log, wakeFD: -1, closing: make(chan struct{}), reaperDone: make(chan struct{}),
		kick: make(chan struct{}, 1), submitterDone: make(chan struct{}),
	}
	if err := e.mapRings(&p); err != nil {
		e.unmap()
		_ = unix.Close(fd)
		return nil, err
	}
	e.initSlots()
	go e.submitLoop()
	go e.reap()
	return e, nil
}

func (e *uringEngine) mapRings(p *ioUringParams) error {
	if p.features&featNoDrop == 0 {
		e.log.Warn("io_uring without IORING_FEAT_NODROP (kernel < 5.5); completions are bounded by the request slots")
	}
	sqBytes := int(p.sqOff.array) + int(p.sqEntries)*4
	cqBytes := int(p.cqOff.cqes) + int(p.cqEntries)*int(unsafe.Sizeof(cqe{}))
	single := p.features&featSingleMmap != 0
	if single {
		sqBytes = max(sqBytes, cqBytes)
	}
	mmap := func(off int64, n int) ([]byte, error) {
		b, err := unix.Mmap(e.ringFD, off, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
		if err != nil {
			return nil, fmt.Errorf("io_uring mmap %d bytes at %#x: %w", n, off, err)
		}
		e.ringMem = append(e.ringMem, b)
		return b, nil
	}
	sq, err := mmap(offSQRing, sqBytes)
	if err != nil {
		return err
	}
	cq := sq
	if !single {
		if cq, err = mmap(offCQRing, cqBytes); err != nil {
			return err
		}
	}
	sqesMem, err := mmap(offSQEs, int(p.sqEntries)*int(unsafe.Sizeof(sqe{})))
	if err != nil {
		return err
	}
	u32 := func(b []byte, off uint32) *uint32 { return (*uint32)(unsafe.Pointer(&b[off])) }
	e.sqHead, e.sqTail = u32(sq, p.sqOff.head), u32(sq, p.sqOff.tail)
	e.sqMask, e.sqSize = *u32(sq, p.sqOff.ringMask), p.sqEntries
	e.cqHead, e.cqTail = u32(cq, p.cqOff.head), u32(cq, p.cqOff.tail)
	e.sqFlags, e.cqFlags = u32(sq, p.sqOff.flags), u32(cq, p.cqOff.flags)
	e.cqMask = *u32(cq, p.cqOff.ringMask)
	e.cqes = unsafe.Pointer(&cq[p.cqOff.cqes])
	e.sqes = unsafe.Pointer(&sqesMem[0])
	e.tail = atomic.LoadUint32(e.sqTail)
	// Identity SQ index array: SQE i is always at array slot i.
	array := unsafe.Slice((*uint32)(unsafe.Pointer(&sq[p.sqOff.array])), p.sqEntries)
	for i := range array {
		array[i] = uint32(i)
	}
	return nil
}

// registerEventFD creates a non-blocking eventfd, registers it with the
// ring (IORING_REGISTER_EVENTFD), and keeps it as e.evFD and, for reads
// through the Go netpoller, as e.evFile.
func (e *uringEngine) registerEventFD() error {
	wfd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return fmt.Errorf("io_uring eventfd: %w", err)
	}
	e.evFD = wfd
	e.evFile = os.NewFile(uintptr(wfd), "io_uring-eventfd")
	arg := int32(wfd)
	if err := ioUringRegister(e.ringFD, registerEventFD, unsafe.Pointer(&arg), 1); err != nil {
		return fmt.Errorf("io_uring register eventfd: %w", err)
	}
	return nil
}

// writeEventFD adds one to eventfd fd.
func writeEventFD(log *slog.Logger, fd int) {
	one := uint64(1)
	if _, err := unix.Write(fd, (*[8]byte)(unsafe.Pointer(&one))[:]); err != nil {
		log.Error("io_uring wake eventfd write failed", "err", err, "fd", fd)
	}
}

// initSlots makes one request slot per SQ entry, all free.
func (e *uringEngine) initSlots() {
	e.slots = make(chan uint32, e.sqSize)
	e.reqs = make([]request, e.sqSize)
	for i := range e.reqs {
		e.reqs[i].done = make(chan int32, 1)
		e.slots <- uint32(i)
	}
}

func (e *uringEngine) unmap() {
	for _, b := range e.ringMem {
		_ = unix.Munmap(b)
	}
	e.ringMem = nil
}

// Name returns "uring", or "uring-sqpoll" in SQPOLL mode.
func (e *uringEngine) Name() string {
	if e.sqpoll {
		return KindUringSQPoll
	}
	return KindUring
}

// pushLocked writes one SQE at the tail and publishes it; e.mu must be
// held and the caller must know there is room.
func (e *uringEngine) pushLocked(fill func(*sqe)) {
	s := (*sqe)(unsafe.Add(e.sqes, uintptr(e.tail&e.sqMask)*unsafe.Sizeof(sqe{})))
	*s = sqe{}
	fill(s)
	e.tail++
	atomic.StoreUint32(e.sqTail, e.tail) // release: the SQE is visible before the tail
	e.pending++
}

// flushLocked hands everything pending to the submitter (e.mu held).
func (e *uringEngine) flushLocked() {
	if e.sqpoll {
		e.sqpollKickLocked()
		return
	}
	if e.owner {
		e.wakeOwnerLocked()
		return
	}
	if e.pending == 0 {
		return
	}
	select {
	case e.kick <- struct{}{}:
	default: // already woken: it will see these SQEs too
	}
}

// submitLoop passes published SQEs to the kernel, from one OS thread that
// does nothing else.
//
// The kernel completes a read or write by running task work on the thread
// that submitted it. If that thread could be any Go thread, it could be one
// that then blocks in a killable wait the task work cannot interrupt — a
// read of this process's own FUSE mount, whose answer waits for that very
// completion (seen in the fs tests as a hang). A dedicated, locked thread
// only ever sleeps interruptibly, so its task work always runs; SQEs queued
// while it is in io_uring_enter are batched into the next call.
func (e *uringEngine) submitLoop() {
	runtime.LockOSThread() // never unlocked: the thread ends with the loop
	defer close(e.submitterDone)
	for range e.kick {
		e.mu.Lock()
		for e.pending > 0 && !e.ringGone {
			n := e.pending
			e.pending = 0
			e.mu.Unlock()
			done, err := ioUringEnter(e.ringFD, n, 0, 0)
			e.mu.Lock()
			if done < 0 {
				done = 0
			}
			if uint32(done) < n {
				e.pending += n - uint32(done)
				switch {
				case err == nil, errors.Is(err, unix.EINTR):
				case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EBUSY):
					// The kernel is short of memory or completions must be reaped
					// first: the reaper runs concurrently, so back off briefly.
					e.mu.Unlock()
					time.Sleep(50 * time.Microsecond)
					e.mu.Lock()
				default:
					e.log.Error("io_uring_enter failed; retrying", "err", err, "pending", e.pending)
					e.mu.Unlock()
					time.Sleep(time.Millisecond)
					e.mu.Lock()
				}
			}
		}
		e.mu.Unlock()
	}
}

// do submits one request and waits for its completion. pin, if not nil,
// is the buffer the kernel will use: it stays pinned until the completion.
func (e *uringEngine) do(ctx context.Context, pin unsafe.Pointer, fill func(*sqe)) (int32, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var id uint32
	select {
	case id = <-e.slots:
	case <-e.closing:
		return 0, ErrClosed
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	r := &e.reqs[id]
	if pin != nil {
		r.pinner.Pin(pin)
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		r.pinner.Unpin()
		e.slots <- id
		return 0, ErrClosed
	}
	e.inflight.Add(1)
	e.pushLocked(func(s *sqe) { fill(s); s.userData = uint64(id) })
	e.flushLocked()
	e.mu.Unlock()

	var res int32
	select {
	case res = <-r.done:
	case <-ctx.Done():
		e.cancel(id)
		res = <-r.done // the buffer is the kernel's until this arrives
	}
	r.pinner.Unpin()
	e.slots <- id
	if res == -int32(unix.ECANCELED) && ctx.Err() != nil {
		return 0, ctx.Err()
	}
	if res < 0 {
		return 0, unix.Errno(-res)
	}
	return res, nil
}

// cancel asks the kernel to cancel request id, if the SQ has room.
func (e *uringEngine) cancel(id uint32) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ringGone || e.tail-atomic.LoadUint32(e.sqHead) >= e.sqSize {
		return
	}
	e.pushLocked(func(s *sqe) {
		s.opcode = opAsyncCancel
		s.fd = -1
		s.addr = uint64(id)
		s.userData = tagCancel | uint64(id)
	})
	e.flushLocked()
}

// reap delivers completions until Close has asked it to stop and nothing
// is in flight.
func (e *uringEngine) reap() {
	defer close(e.reaperDone)
	stop := false
	for {
		head := atomic.LoadUint32(e.cqHead)
		tail := atomic.LoadUint32(e.cqTail) // acquire: CQEs up to tail are written
		for ; head != tail; head++ {
			c := (*cqe)(unsafe.Add(e.cqes, uintptr(head&e.cqMask)*unsafe.Sizeof(cqe{})))
			ud, res := c.userData, c.res
			switch {
			case ud&tagStop != 0:
				stop = true
			case ud&tagCancel != 0:
			default:
				e.reqs[ud].done <- res
				e.inflight.Add(-1)
			}
		}
		atomic.StoreUint32(e.cqHead, head) // release the CQ entries to the kernel
		if stop && e.inflight.Load() == 0 {
			return
		}
		if _, err := ioUringEnter(e.ringFD, 0, 1, enterGetEvents); err != nil && !errors.Is(err, unix.EINTR) {
			e.log.Error("io_uring wait for completions failed", "err", err)
			time.Sleep(time.Millisecond)
		}
	}
}

func (e *uringEngine) rw(ctx context.Context, op string, opcode uint8, fd int, buf []byte, off int64, bufIndex int) (int, error) {
	rw := func(b []byte, o int64) (int, error) {
		var p unsafe.Pointer
		if len(b) > 0 {
			p = unsafe.Pointer(unsafe.SliceData(b))
		}
		res, err := e.do(ctx, p, func(s *sqe) {
			s.opcode = opcode
			s.fd = int32(fd)
			s.off = uint64(o)
			s.addr = uint64(uintptr(p))
			s.len = uint32(len(b))
			s.bufIndex = uint16(bufIndex)
		})
		return int(res), err
	}
	if opcode == opRead || opcode == opReadFixed {
		return readFull(op, fd, buf, off, rw)
	}
	return writeFull(op, fd, buf, off, rw)
}

// ReadAt reads through the ring until buf is full or end of file.
func (e *uringEngine) ReadAt(ctx context.Context, fd int, buf []byte, off int64) (int, error) {
	return e.rw(ctx, "read", opRead, fd, buf, off, 0)
}

// WriteAt writes through the ring until buf is written or an error occurs.
func (e *uringEngine) WriteAt(ctx context.Context, fd int, buf []byte, off int64) (int, error) {
	return e.rw(ctx, "write", opWrite, fd, buf, off, 0)
}

// ReadFixed reads into registered buffer bufIndex (IORING_OP_READ_FIXED).
func (e *uringEngine) ReadFixed(ctx context.Context, fd int, buf []byte, off int64, bufIndex int) (int, error) {
	if err := e.checkFixed(buf, bufIndex); err != nil {
		return 0, opError("read_fixed", fd, off, len(buf), err)
	}
	return e.rw(ctx, "read_fixed", opReadFixed, fd, buf, off, bufIndex)
}

// WriteFixed writes from registered buffer bufIndex (IORING_OP_WRITE_FIXED).
func (e *uringEngine) WriteFixed(ctx context.Context, fd int, buf []byte, off int64, bufIndex int) (int, error) {
	if err := e.checkFixed(buf, bufIndex); err != nil {
		return 0, opError("write_fixed", fd, off, len(buf), err)
	}
	return e.rw(ctx, "write_fixed", opWriteFixed, fd, buf, off, bufIndex)
}

func (e *uringEngine) checkFixed(buf []byte, idx int) error {
	e.mu.Lock()
	defer e.mu.Unlock() // regs is written under both regMu and mu
	return checkFixed(e.regs, buf, idx)
}

func (e *uringEngine) sync(ctx context.Context, op string, fd int, flags uint32) error {
	_, err := e.do(ctx, nil, func(s *sqe) {
		s.opcode = opFsync
		s.fd = int32(fd)
		s.opFlags = flags
	})
	if err != nil {
		return opError(op, fd, 0, 0, err)
	}
	return nil
}

// Fsync submits IORING_OP_FSYNC.
func (e *uringEngine) Fsync(ctx context.Context, fd int) error { return e.sync(ctx, "fsync", fd, 0) }

// Fdatasync submits IORING_OP_FSYNC with IORING_FSYNC_DATASYNC.
func (e *uringEngine) Fdatasync(ctx context.Context, fd int) error {
	return e.sync(ctx, "fdatasync", fd, fsyncDatasync)
}

// RegisterBuffers registers bufs with the kernel (IORING_REGISTER_BUFFERS),
// unregistering any earlier set first.
func (e *uringEngine) RegisterBuffers(bufs [][]byte) error {
	if !e.owner {
		e.mu.Lock()
		defer e.mu.Unlock()
		return e.registerBuffers(bufs, func(op uint32, arg unsafe.Pointer, n uint32) error {
			return ioUringRegister(e.ringFD, op, arg, n)
		}, func(r [][]byte) { e.regs = r })
	}
	// Owner mode: a SINGLE_ISSUER ring accepts io_uring_register only from
	// its owner thread. mu is not held while the owner works: it needs it.
	e.regMu.Lock()
	defer e.regMu.Unlock()
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		return fmt.Errorf("iouring register buffers: %w", ErrClosed)
	}
	return e.registerBuffers(bufs, func(op uint32, arg unsafe.Pointer, n uint32) (err error) {
		e.onOwner(func() { err = ioUringRegister(e.ringFD, op, arg, n) })
		return err
	}, func(r [][]byte) {
		e.mu.Lock()
		e.regs = r
		e.mu.Unlock()
	})
}

// registerBuffers is RegisterBuffers with the system call and the update
// of e.regs supplied by the mode.
func (e *uringEngine) registerBuffers(bufs [][]byte, register func(uint32, unsafe.Pointer, uint32) error, setRegs func([][]byte)) error {
	if !e.owner && e.closed {
		return fmt.Errorf("iouring register buffers: %w", ErrClosed)
	}
	if e.regs != nil {
		if err := register(unregisterBuffers, nil, 0); err != nil {
			return fmt.Errorf("iouring unregister buffers: %w", err)
		}
		setRegs(nil)
	}
	if len(bufs) == 0 {
		return nil
	}
	iov := make([]unix.Iovec, len(bufs))
	for i, b := range bufs {
		if len(b) == 0 {
			return fmt.Errorf("iouring register buffers: buffer %d is empty: %w", i, unix.EINVAL)
		}
		iov[i].Base = unsafe.SliceData(b)
		iov[i].SetLen(len(b))
	}
	err := register(registerBuffers, unsafe.Pointer(&iov[0]), uint32(len(iov)))
	runtime.KeepAlive(iov)
	if err != nil {
		return fmt.Errorf("iouring register %d buffers: %w", len(bufs), err)
	}
	setRegs(append([][]byte(nil), bufs...))
	return nil
}

// Close refuses new requests, waits for those in flight and tears the ring
// down.
func (e *uringEngine) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		if e.owner {
			<-e.ownerDone
		} else { // the reaper, in SQPOLL mode too
			<-e.reaperDone
		}
		return nil
	}
	e.closed = true
	e.mu.Unlock()
	close(e.closing)
	if e.owner {
		return e.closeOwner()
	}
	if e.sqpoll {
		return e.closeSQPoll()
	}

	// Stop the reaper with a NOP of our own: it needs a request slot (and
	// so SQ room) like any request.
	id := <-e.slots
	e.mu.Lock()
	e.pushLocked(func(s *sqe) { s.opcode = opNop; s.userData = tagStop | uint64(id) })
	e.flushLocked()
	e.mu.Unlock()
	<-e.reaperDone

	e.mu.Lock()
	e.ringGone = true
	e.mu.Unlock()
	close(e.kick)
	<-e.submitterDone
	e.unmap()
	if err := unix.Close(e.ringFD); err != nil {
		return fmt.Errorf("iouring close ring fd %d: %w", e.ringFD, err)
	}
	return nil
}
