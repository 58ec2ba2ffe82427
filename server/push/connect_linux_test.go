//go:build linux

package push

import (
	"net"
	"strings"
	"syscall"
	"testing"
	"time"
)

// unaccepting is a listener on 127.0.0.1 whose accept queue is full: the
// kernel drops further SYNs (Linux, with a backlog of 0), so a connect to
// it hangs as to an endpoint that does not accept connections.
func unaccepting(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	rc, err := l.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var lerr error
	if err := rc.Control(func(fd uintptr) { lerr = syscall.Listen(int(fd), 0) }); err != nil || lerr != nil {
		t.Fatalf("listen backlog 0: %v %v", err, lerr)
	}
	// Fill the queue: connections complete until it is full, then a dial
	// gets no answer.
	for range 16 {
		c, err := net.DialTimeout("tcp", l.Addr().String(), 300*time.Millisecond)
		if err != nil {
			return l
		}
		t.Cleanup(func() { c.Close() })
	}
	t.Fatal("the accept queue never filled")
	return nil
}

// An endpoint that does not accept connections fails at the connect
// timeout (default 3s), far below the push timeout: its slot is free again
// long before.
func TestConnectTimeoutWhenNotAccepted(t *testing.T) {
	t.Parallel()
	const timeout = time.Minute
	e := setup(t, timeout)
	l := unaccepting(t)
	e.subscribe("deaf", "deaf/**", "http://"+l.Addr().String()+"/hook")
	e.spawnAndSend("/deaf/1", "x")
	msg, took := e.firstFailure("deaf")
	if !strings.Contains(msg, "no connection within 3s") || took > timeout/4 {
		t.Fatalf("failed after %s with %q; want the 3s connect timeout", took, msg)
	}
	t.Logf("connection never accepted: failed after %s: %s", took, msg)
}
