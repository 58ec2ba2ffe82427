// Package connlimit keeps an HTTP server's connections within a cap without
// leaving anyone unanswered. It replaces a listener that stops accepting at
// the cap (golang.org/x/net/netutil.LimitListener), under which every
// connection past the cap, health probes included, waits in the kernel's
// accept queue until some connection closes: an idle timeout or a
// long-poll later.
//
// A Listener accepts every connection at once and sorts it:
//
//   - Admitted: under Max and under the client's PerClient limit (a client
//     is a remote IPv4 address, or an IPv6 /64; loopback counts like any
//     other). The http.Server serves it as usual.
//   - At a limit, an idle connection goes first: the oldest keep-alive
//     connection waiting for its next request, or one that has not sent a
//     whole request within IdleGrace of being accepted, is closed to make
//     room: the client's own at its limit, anyone's at the cap. A request
//     being served (a long-poll included) is never cut.
//   - Otherwise the connection is past the limits and is answered, never
//     queued. Its request, when already at hand (one non-blocking read), is
//     refused on the spot unless it is a probe (Config.Probe: /healthz,
//     /readyz): 503 TOO_MANY_CONNECTIONS, or 429
//     TOO_MANY_CLIENT_CONNECTIONS past the client's limit, with
//     Retry-After and Connection: close. A probe, or a request not all
//     there yet, goes to Overflow, served by OverflowServer for one request
//     and closed: probes answered as usual, anything else refused the same
//     way. So probes answer while request connections are exhausted, and a
//     live reader past the cap is refused before it holds a place.
//   - When Overflow connections are already being answered, a new one whose
//     request is not all there is closed unanswered (Dropped): open files
//     stay within Max + Overflow whatever clients do.
//
// On Linux the listener gets TCP_DEFER_ACCEPT (nginx's "deferred"): the
// kernel hands over a connection once its first bytes have arrived, so a
// connection past the limits almost always has its request at hand, and
// one that sends nothing waits in the kernel, not in a place here.
//
// The server tells the Listener which connections are idle through its
// ConnState hook (http.Server.ConnState = l.ConnState).
//
// What it must not do: read or write a connection it admitted (the
// http.Server owns it), wait in Accept for anything but the inner
// listener, or close a connection with a request in flight. Closing an
// idle keep-alive connection is the race every HTTP/1.1 server has at its
// idle timeout: a client that sent a request just then sees the
// connection close and retries (Go's and browsers' clients do for
// idempotent requests).
package connlimit
