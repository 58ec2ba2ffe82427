//go:build !linux

package connlimit

import "net"

// deferAccept is Linux's TCP_DEFER_ACCEPT; elsewhere connections are
// accepted at once.
func deferAccept(ln net.Listener, secs int) {}
