package connlimit

import (
	"net"
	"syscall"
)

// deferAccept asks the kernel to hand over a TCP connection only once the
// client has sent something (or after secs): a connection that is
// accepted then has its request to read, and silent ones wait in the
// kernel, not in a place here. nginx's "deferred" listen option.
func deferAccept(ln net.Listener, secs int) {
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return
	}
	rc, err := tl.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_DEFER_ACCEPT, secs)
	})
}
