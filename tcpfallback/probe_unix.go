//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package tcpfallback

import "syscall"

// peerClosed reports whether the peer has closed (or reset) the
// connection, without blocking and without consuming any byte: a
// non-blocking MSG_PEEK of one byte returning end of file or an error
// other than "would block". The caller makes sure nobody else reads.
func peerClosed(raw syscall.RawConn) bool {
	closed := false
	_ = raw.Control(func(fd uintptr) {
		var b [1]byte
		n, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		switch {
		case err == nil:
			closed = n == 0
		case err == syscall.EAGAIN || err == syscall.EWOULDBLOCK || err == syscall.EINTR:
		default:
			closed = true
		}
	})
	return closed
}
