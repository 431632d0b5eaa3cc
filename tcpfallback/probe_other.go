//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package tcpfallback

import "syscall"

// peerClosed cannot peek on this platform: it reports false, and a close
// of an idle connection by its peer is noticed by the next call's read.
func peerClosed(syscall.RawConn) bool { return false }
