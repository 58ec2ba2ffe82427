//go:build unix

package connlimit

import (
	"net"
	"syscall"
)

// peek reads what has already arrived on nc into buf, without waiting (one
// non-blocking read), and returns how much.
func peek(nc net.Conn, buf []byte) int {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return 0
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0
	}
	n := 0
	_ = rc.Read(func(fd uintptr) bool {
		if m, err := syscall.Read(int(fd), buf); err == nil && m > 0 {
			n = m
		}
		return true // never wait for more
	})
	return n
}
