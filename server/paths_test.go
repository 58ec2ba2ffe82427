package server_test

import (
	"strings"
	"testing"
)

// No encoding of a path names a stream other than the one routed and
// authorized: encoded separators, double encoding and dot segments are 400
// on every method, with and without credentials, in dev mode too; the
// runner's wake stream is untouched afterwards.
func TestEncodedPathsCannotReachWakeStreams(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"admin token", "dev mode"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			var b *bundle
			admin := ""
			if mode == "admin token" {
				b = setup(t, withElectricAdmin)
				admin = electricAdmin
			} else {
				b = setup(t)
			}
			tok := b.registerRunner("r1")
			b.spawn("/chat/1")
			b.send("/chat/1", "x")
			before := string(b.must(200, b.do("GET", "/runners/r1/wake?offset=-1", tok, nil)).body)

			paths := []string{
				"/v1/stream/runners%2Fr1%2Fwake", "/v1/stream/runners%2fr1%2fwake", "/runners/r1%2Fwake",
				"/runners%2Fr1%2Fwake", "/v1/stream/runners/r1%2Fwake", "/v1/stream/runners%2Fr1/wake",
				"/v1/stream/runners%252Fr1%252Fwake", "/runners%252Fr1%252Fwake",
				"/v1/stream/runners/x/%2E%2E/r1/wake", "/v1/stream/runners/x/%2e%2e/r1/wake",
				"/v1/stream/runners/./r1/wake", "/v1/stream/chat/1/..%2F..%2Frunners%2Fr1%2Fwake",
				"/v1/stream/runners%5Cr1%5Cwake", "/v1/stream/chat%2F1%2Fmain",
			}
			for _, p := range paths {
				for _, m := range []string{"GET", "HEAD", "POST", "PUT", "DELETE"} {
					for _, cred := range []string{"", admin} {
						var body any
						if m == "POST" || m == "PUT" {
							body = `[{"type":"wake","stream":"/v1/stream/chat/1/main","generation":9,"ts":1}]`
						}
						r := b.do(m, p+"?offset=-1", cred, body)
						if r.status != 400 {
							t.Errorf("%s %s (token %v): %d %s, want 400", m, p, cred != "", r.status, r.body)
						}
					}
				}
			}
			after := string(b.must(200, b.do("GET", "/runners/r1/wake?offset=-1", tok, nil)).body)
			if after != before || !strings.Contains(after, `"generation": 1`) && !strings.Contains(after, `"generation":1`) {
				t.Fatalf("wake stream changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}
