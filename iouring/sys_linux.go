package iouring

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// The io_uring kernel ABI (include/uapi/linux/io_uring.h), only the parts
// this package uses. The layouts are fixed by the kernel; the size checks
// below fail the build if a field is misplaced.

// ioUringParams is struct io_uring_params.
type ioUringParams struct {
	sqEntries    uint32
	cqEntries    uint32
	flags        uint32
	sqThreadCPU  uint32
	sqThreadIdle uint32
	features     uint32
	wqFD         uint32
	resv         [3]uint32
	sqOff        sqringOffsets
	cqOff        cqringOffsets
}

// sqringOffsets is struct io_sqring_offsets.
type sqringOffsets struct {
	head, tail, ringMask, ringEntries, flags, dropped, array, resv1 uint32
	userAddr                                                        uint64
}

// cqringOffsets is struct io_cqring_offsets.
type cqringOffsets struct {
	head, tail, ringMask, ringEntries, overflow, cqes, flags, resv1 uint32
	userAddr                                                        uint64
}

// sqe is struct io_uring_sqe (64 bytes).
type sqe struct {
	opcode      uint8
	flags       uint8
	ioprio      uint16
	fd          int32
	off         uint64
	addr        uint64
	len         uint32
	opFlags     uint32 // rw_flags, fsync_flags, cancel_flags, ...
	userData    uint64
	bufIndex    uint16
	personality uint16
	spliceFDIn  int32
	addr3       uint64
	pad2        uint64
}

// cqe is struct io_uring_cqe (16 bytes; this package never sets CQE32).
type cqe struct {
	userData uint64
	res      int32
	flags    uint32
}

// Compile-time layout checks.
var (
	_ [120]byte = [unsafe.Sizeof(ioUringParams{})]byte{}
	_ [64]byte  = [unsafe.Sizeof(sqe{})]byte{}
	_ [16]byte  = [unsafe.Sizeof(cqe{})]byte{}
)

const (
	opNop         = 0
	opFsync       = 3
	opReadFixed   = 4
	opWriteFixed  = 5
	opAsyncCancel = 14
	opRead        = 22
	opWrite       = 23

	fsyncDatasync = 1 << 0

	setupSQPoll       = 1 << 1
	setupClamp        = 1 << 4
	setupSubmitAll    = 1 << 7
	setupSingleIssuer = 1 << 12 // 6.0
	setupDeferTaskrun = 1 << 13 // 6.1; needs setupSingleIssuer

	featSingleMmap = 1 << 0
	featNoDrop     = 1 << 1

	enterGetEvents = 1 << 0
	enterSQWakeup  = 1 << 1

	sqNeedWakeup = 1 << 0 // in the SQ ring's flags: the SQPOLL thread sleeps

	cqEventFDDisabled = 1 << 0 // in the CQ ring's flags: do not signal the registered eventfd

	registerBuffers   = 0
	unregisterBuffers = 1
	registerEventFD   = 4

	offSQRing = 0
	offCQRing = 0x8000000
	offSQEs   = 0x10000000
)

func ioUringSetup(entries uint32, p *ioUringParams) (int, error) {
	fd, _, errno := unix.Syscall(unix.SYS_IO_URING_SETUP, uintptr(entries), uintptr(unsafe.Pointer(p)), 0)
	if errno != 0 {
		return -1, errno
	}
	return int(fd), nil
}

func ioUringEnter(fd int, toSubmit, minComplete, flags uint32) (int, error) {
	n, _, errno := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(fd), uintptr(toSubmit), uintptr(minComplete), uintptr(flags), 0, 0)
	if errno != 0 {
		return int(n), errno
	}
	return int(n), nil
}

func ioUringRegister(fd int, opcode uint32, arg unsafe.Pointer, nrArgs uint32) error {
	_, _, errno := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(fd), uintptr(opcode), uintptr(arg), uintptr(nrArgs), 0, 0)
	if errno != 0 {
		return errno
	}
	return nil
}
