package main

import (
	"io"
	"strings"
	"testing"
)

// The stream guard settings are checked before serving: a bad value exits 2
// naming the setting.
func TestServeStreamGuardFlags(t *testing.T) {
	t.Parallel()
	db := []string{"--database-url", "postgres://127.0.0.1:1/none"}
	pullwake(t, nil, append([]string{"serve", "--stream-write-auth", "open"}, db...)...).expect(t, 2, "", `stream write auth "open"`)
	pullwake(t, nil, append([]string{"serve", "--stream-read-auth", "all"}, db...)...).expect(t, 2, "", `stream read auth "all"`)
	pullwake(t, []string{"PULLWAKE_MAX_LIVE_READERS=lots"}, append([]string{"serve"}, db...)...).expect(t, 2, "", `PULLWAKE_MAX_LIVE_READERS="lots" is not an integer`)
	pullwake(t, nil, append([]string{"serve", "--max-live-readers", "0"}, db...)...).expect(t, 2, "", `max-live-readers`)
}

// The connection limits (internal/connlimit) have their documented
// defaults, each read from its flag or variable (the flag winning), and a
// bad value is refused at start naming the setting.
func TestServeConnectionLimitFlags(t *testing.T) {
	t.Parallel()
	c, err := parseServe(nil, env(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if h := c.conns; c.http.maxConns != 1024 || h.perClient != 256 || h.overflow != 64 || h.probeAddr != "" {
		t.Fatalf("defaults: %d %+v", c.http.maxConns, h)
	}
	c, err = parseServe(nil, env("PULLWAKE_MAX_CONNECTIONS", "10", "PULLWAKE_OVERFLOW_CONNECTIONS", "3",
		"PULLWAKE_PROBE_ADDR", "127.0.0.1:9091"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if h := c.conns; h.perClient != 2 || h.overflow != 3 || h.probeAddr != "127.0.0.1:9091" {
		t.Fatalf("from the environment, per-client derived from 10: %+v", h)
	}
	c, err = parseServe([]string{"--max-connections-per-client", "7", "--overflow-connections", "5", "--probe-addr", "[::1]:9092"},
		env("PULLWAKE_MAX_CONNECTIONS_PER_CLIENT", "lots", "PULLWAKE_OVERFLOW_CONNECTIONS", "0", "PULLWAKE_PROBE_ADDR", "nowhere"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if h := c.conns; h.perClient != 7 || h.overflow != 5 || h.probeAddr != "[::1]:9092" {
		t.Fatalf("flags over bad variables: %+v", h)
	}

	for _, tc := range []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"per-client garbage", []string{"PULLWAKE_MAX_CONNECTIONS_PER_CLIENT", "lots"}, nil, `PULLWAKE_MAX_CONNECTIONS_PER_CLIENT="lots" is not an integer`},
		{"per-client negative", nil, []string{"--max-connections-per-client", "-1"}, "--max-connections-per-client (PULLWAKE_MAX_CONNECTIONS_PER_CLIENT) -1 must be between 0"},
		{"per-client over the cap", []string{"PULLWAKE_MAX_CONNECTIONS", "100", "PULLWAKE_MAX_CONNECTIONS_PER_CLIENT", "101"}, nil, "and --max-connections (100)"},
		{"overflow zero", []string{"PULLWAKE_OVERFLOW_CONNECTIONS", "0"}, nil, "--overflow-connections (PULLWAKE_OVERFLOW_CONNECTIONS) 0 must be at least 1"},
		{"overflow garbage", []string{"PULLWAKE_OVERFLOW_CONNECTIONS", "some"}, nil, `PULLWAKE_OVERFLOW_CONNECTIONS="some" is not an integer`},
		{"probe address without port", []string{"PULLWAKE_PROBE_ADDR", "9091"}, nil, `--probe-addr (PULLWAKE_PROBE_ADDR) "9091" must be host:port`},
		{"probe address is the API's", nil, []string{"--addr", "127.0.0.1:8080", "--probe-addr", "127.0.0.1:8080"}, "must differ from --addr"},
	} {
		if _, err := parseServe(tc.args, env(tc.env...), io.Discard); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
	// The binary exits 2 with the message.
	pullwake(t, []string{"PULLWAKE_OVERFLOW_CONNECTIONS=0"}, "serve", "--database-url", "postgres://127.0.0.1:1/none").
		expect(t, 2, "", `overflow-connections`)
}
