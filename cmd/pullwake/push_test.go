package main

import (
	"strings"
	"testing"
)

// Push delivery settings are checked before serving: a malformed signing
// key or timeout exits 2 naming the setting; a valid key is kept.
func TestServePushFlags(t *testing.T) {
	t.Parallel()
	db := []string{"--database-url", "postgres://127.0.0.1:1/none"}
	pullwake(t, []string{"PULLWAKE_WEBHOOK_SIGNING_KEY=short"}, append([]string{"serve"}, db...)...).expect(t, 2, "", `PULLWAKE_WEBHOOK_SIGNING_KEY`)
	pullwake(t, nil, append([]string{"serve", "--push-timeout", "0s"}, db...)...).expect(t, 2, "", `push-timeout`)
	pullwake(t, []string{"PULLWAKE_PUSH_POLL_INTERVAL=soon"}, append([]string{"serve"}, db...)...).expect(t, 2, "", `PULLWAKE_PUSH_POLL_INTERVAL`)

	env := map[string]string{"PULLWAKE_WEBHOOK_SIGNING_KEY": strings.Repeat("ab", 32), "DATABASE_URL": "postgres://127.0.0.1:1/none"}
	c, err := parseServe(nil, func(k string) string { return env[k] }, &strings.Builder{})
	if err != nil || c.push.signer == nil {
		t.Fatalf("valid key: %v, signer %v", err, c.push.signer)
	}
}
