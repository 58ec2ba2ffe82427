package main

import "testing"

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
