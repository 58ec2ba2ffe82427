package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// env returns a getenv over kv plus a database URL (parseServe needs one).
func env(kv ...string) func(string) string {
	m := map[string]string{"PULLWAKE_DATABASE_URL": "postgres://x@127.0.0.1/db"}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) string { return m[k] }
}

const goodHex = "0123456789abcdef0123456789abcdef"    // 32 hex: 128 bits
const goodB64 = "Zm9vYmFyLWJhei1xdXV4LTE"             // 23 base64url chars
const shortB64 = "Zm9vYmFyLWJhei1xdXV4LT"             // 22: exactly 132 bits, accepted
const weakB64 = "Zm9vYmFyLWJhei1xdXV4L"               // 21: 126 bits
const weakHex = "0123456789abcdef0123456789abcde"     // 31 hex: 124 bits
const repetitive = "abababababababababababababababab" // long, 2 distinct

// A malformed environment value is an error naming the variable, unless
// the flag is given (the flag wins); malformed flags are errors too.
func TestServeConfigMalformedValues(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		env  []string
		args []string
		want string // "" = accepted
	}{
		{"duration without unit", []string{"PULLWAKE_SWEEP_INTERVAL", "5"}, nil, "PULLWAKE_SWEEP_INTERVAL"},
		{"lease garbage", []string{"PULLWAKE_DEFAULT_LEASE_TTL", "thirty"}, nil, "PULLWAKE_DEFAULT_LEASE_TTL"},
		{"long poll garbage", []string{"PULLWAKE_LONG_POLL_TIMEOUT", "1x"}, nil, "PULLWAKE_LONG_POLL_TIMEOUT"},
		{"retention garbage", []string{"PULLWAKE_RETENTION", "a week"}, nil, "PULLWAKE_RETENTION"},
		{"bool garbage", []string{"PULLWAKE_MIGRATE", "maybe"}, nil, "PULLWAKE_MIGRATE"},
		{"require types garbage", []string{"PULLWAKE_REQUIRE_ENTITY_TYPES", "sometimes"}, nil, "PULLWAKE_REQUIRE_ENTITY_TYPES"},
		{"int garbage", []string{"PULLWAKE_MAX_CONNECTIONS", "lots"}, nil, "PULLWAKE_MAX_CONNECTIONS"},
		{"read timeout garbage", []string{"PULLWAKE_READ_TIMEOUT", "-"}, nil, "PULLWAKE_READ_TIMEOUT"},
		{"idle timeout garbage", []string{"PULLWAKE_IDLE_TIMEOUT", "1 minute"}, nil, "PULLWAKE_IDLE_TIMEOUT"},
		{"write timeout garbage", []string{"PULLWAKE_WRITE_TIMEOUT", "soon"}, nil, "PULLWAKE_WRITE_TIMEOUT"},
		{"two bad, both named", []string{"PULLWAKE_MIGRATE", "maybe", "PULLWAKE_SWEEP_INTERVAL", "5"}, nil, "PULLWAKE_MIGRATE.*PULLWAKE_SWEEP_INTERVAL"},
		{"flag wins over a bad variable", []string{"PULLWAKE_SWEEP_INTERVAL", "5"}, []string{"--sweep-interval", "2s"}, ""},
		{"bad flag", nil, []string{"--sweep-interval", "5"}, "sweep-interval"},
		{"negative", []string{"PULLWAKE_IDLE_TIMEOUT", "-1s"}, nil, "idle-timeout"},
		{"zero connections", []string{"PULLWAKE_MAX_CONNECTIONS", "0"}, nil, "max-connections"},
		{"write timeout shorter than a long poll", []string{"PULLWAKE_WRITE_TIMEOUT", "20s"}, nil, "would cut live reads"},
		{"all good", []string{"PULLWAKE_SWEEP_INTERVAL", "2s", "PULLWAKE_MIGRATE", "false", "PULLWAKE_MAX_CONNECTIONS", "10"}, nil, ""},
	} {
		_, err := parseServe(c.args, env(c.env...), io.Discard)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && err == nil:
			t.Errorf("%s: accepted, want an error naming %s", c.name, c.want)
		case c.want != "" && !matches(c.want, err.Error()):
			t.Errorf("%s: error %q does not name %s", c.name, err, c.want)
		}
	}
}

func matches(pattern, s string) bool {
	for _, p := range strings.Split(pattern, ".*") {
		i := strings.Index(s, p)
		if i < 0 {
			return false
		}
		s = s[i+len(p):]
	}
	return true
}

// The HTTP limits have their documented defaults; the write timeout grows
// with the long-poll timeout.
func TestServeConfigHTTPDefaults(t *testing.T) {
	t.Parallel()
	c, err := parseServe(nil, env(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := httpLimits{readTimeout: 30 * time.Second, writeTimeout: 90 * time.Second, idleTimeout: 60 * time.Second, maxConns: 1024}
	if c.http != want {
		t.Fatalf("defaults %+v, want %+v", c.http, want)
	}
	c, err = parseServe(nil, env("PULLWAKE_LONG_POLL_TIMEOUT", "2m"), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.http.writeTimeout != 150*time.Second {
		t.Fatalf("write timeout with a 2m long poll: %s, want 2m30s", c.http.writeTimeout)
	}
}

// The admin token: below 128 bits it is refused; it may come from a file;
// token and file together are refused.
func TestServeConfigAdminToken(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good, weak, empty := file("good", goodHex+"\n"), file("weak", "secret\n"), file("empty", "\n")
	for _, c := range []struct {
		name string
		env  []string
		args []string
		want string // error substring; "" = accepted
		tok  string // the token served, when accepted
	}{
		{"32 hex", []string{"PULLWAKE_ADMIN_TOKEN", goodHex}, nil, "", goodHex},
		{"23 base64url", []string{"PULLWAKE_ADMIN_TOKEN", goodB64}, nil, "", goodB64},
		{"22 base64url", nil, []string{"--admin-token", shortB64}, "", shortB64},
		{"21 base64url", []string{"PULLWAKE_ADMIN_TOKEN", weakB64}, nil, "too short", ""},
		{"31 hex", []string{"PULLWAKE_ADMIN_TOKEN", weakHex}, nil, "at least 32 hex", ""},
		{"a word", []string{"PULLWAKE_ADMIN_TOKEN", "admin-secret"}, nil, "too short", ""},
		{"repetitive", []string{"PULLWAKE_ADMIN_TOKEN", repetitive}, nil, "too repetitive", ""},
		{"with a space", []string{"PULLWAKE_ADMIN_TOKEN", goodB64 + " x"}, nil, "space", ""},
		{"from a file", []string{"PULLWAKE_ADMIN_TOKEN_FILE", good}, nil, "", goodHex},
		{"from a file, flag", nil, []string{"--admin-token-file", good}, "", goodHex},
		{"weak file", []string{"PULLWAKE_ADMIN_TOKEN_FILE", weak}, nil, "too short", ""},
		{"empty file", []string{"PULLWAKE_ADMIN_TOKEN_FILE", empty}, nil, "is empty", ""},
		{"missing file", []string{"PULLWAKE_ADMIN_TOKEN_FILE", filepath.Join(dir, "nope")}, nil, "admin token file", ""},
		{"token and file", []string{"PULLWAKE_ADMIN_TOKEN", goodHex, "PULLWAKE_ADMIN_TOKEN_FILE", good}, nil, "not both", ""},
		{"none: dev mode", nil, nil, "", ""},
	} {
		cfg, err := parseServe(c.args, env(c.env...), io.Discard)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && err == nil:
			t.Errorf("%s: accepted, want an error with %q", c.name, c.want)
		case c.want != "" && (!strings.Contains(err.Error(), c.want) || !errors.Is(err, errUsage)):
			t.Errorf("%s: error %q, want a usage error with %q", c.name, err, c.want)
		case c.want == "" && cfg.adminToken != c.tok:
			t.Errorf("%s: token %q, want %q", c.name, cfg.adminToken, c.tok)
		}
		if err != nil && c.tok == "" && strings.Contains(err.Error(), weakB64) {
			t.Errorf("%s: the error repeats the token", c.name)
		}
	}
}

// The binary exits non-zero, naming the variable, on a malformed value.
func TestServeExitsOnMalformedEnv(t *testing.T) {
	t.Parallel()
	r := pullwake(t, []string{"PULLWAKE_DATABASE_URL=postgres://x@127.0.0.1:1/db", "PULLWAKE_SWEEP_INTERVAL=5"}, "serve")
	r.expect(t, 2, "", "PULLWAKE_SWEEP_INTERVAL=\"5\" is not a duration")
	r = pullwake(t, []string{"PULLWAKE_DATABASE_URL=postgres://x@127.0.0.1:1/db", "PULLWAKE_ADMIN_TOKEN=admin"}, "serve")
	r.expect(t, 2, "", "admin token too short")
}

// PULLWAKE_REQUIRE_ENTITY_TYPES is off by default (SPEC §4's /entities
// spawns untyped entities); the variable or the flag turns it on.
func TestServeConfigRequireEntityTypes(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		env  []string
		args []string
		want bool
	}{
		{nil, nil, false},
		{[]string{"PULLWAKE_REQUIRE_ENTITY_TYPES", "true"}, nil, true},
		{[]string{"PULLWAKE_REQUIRE_ENTITY_TYPES", "true"}, []string{"--require-entity-types=false"}, false},
		{nil, []string{"--require-entity-types"}, true},
	} {
		sc, err := parseServe(c.args, env(c.env...), io.Discard)
		if err != nil || sc.requireTypes != c.want {
			t.Errorf("env %v args %v: requireTypes %v (%v), want %v", c.env, c.args, sc.requireTypes, err, c.want)
		}
	}
}

// Group commit is on unless the flag or the environment turns it off.
func TestServeConfigGroupCommitDefault(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		want bool
	}{
		{"default", nil, nil, true},
		{"env off", nil, []string{"PULLWAKE_GROUP_COMMIT", "false"}, false},
		{"flag off", []string{"--group-commit=false"}, nil, false},
		{"flag over env", []string{"--group-commit"}, []string{"PULLWAKE_GROUP_COMMIT", "false"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseServe(tc.args, env(tc.env...), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if c.groupCommit != tc.want {
				t.Fatalf("group commit %v, want %v", c.groupCommit, tc.want)
			}
		})
	}
}
