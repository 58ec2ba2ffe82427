// Package server is pullwake's HTTP server: routing, handlers and
// credentials for the lifecycle routes (entities, runners, claims, wake
// callbacks) and Electric's dialect of the entity routes, and the
// composition of its packages into one router and one lifecycle (New,
// Start, Stop). Around it:
//
//   - server/streams serves /v1/stream/ (the Durable Streams protocol);
//   - server/tokens is the in-memory write-token store, server/writeauth
//     the append gate over it (memory, then the claim row a signed token
//     names);
//   - server/sweeper runs the background passes (expiry, the wake-event
//     backstop, housekeeping);
//   - server/reconcile keeps the token maps (write tokens, the runner
//     token cache) in line with the database: claim and runner-token
//     notifications at once, a timer anyway;
//   - server/push delivers wakes to webhook targets (the Server is its
//     Host: a push claim's token is minted and dropped here);
//   - server/subscriptions serves the webhook subscriptions
//     (/__ds/subscriptions/{id}) and the signing key (/__ds/jwks.json);
//   - server/entitytypes serves /_electric/entity-types (and serve
//     endpoints' manifests) and validates spawns and sends against the
//     registered types;
//   - server/httpx is the ground every handler stands on: request
//     decoding, error answers, the id patterns and the one path rule.
//
// It is thin on purpose. Every lifecycle decision — who may claim, what a
// release clears, when a claim expires — is made by one plpgsql function in
// one transaction (sql/). The server's own memory holds only write tokens,
// and it changes them after the database has decided: mint after a claim
// committed, clear only a token its claim still owns after a release or
// expiry. It must never gate a release on what memory says.
//
// Arrows run one way: server imports these packages, they import httpx
// and the ground below (db, internal/...), and none imports server. Each
// takes narrow dependencies through its Config, and what it needs of the
// server as a func value or a small interface (the admin check, the
// runner-token cache, push's Host), never the *Server.
//
// What stays here shares the Server's memory steps and credentials: the
// entity routes under both prefixes (one implementation, two encodings,
// dialect.go; a send wakes the stream's live readers and the wake
// watcher), runners, claims and wake callbacks (every claim mints a write
// token, every release drops it and publishes the claim's end), the wake
// streams (read with a runner's token), group commit, and the admin token
// and runner-token cache (auth.go). A split of those would only move
// afterSend, notify and afterRelease behind exported names.
package server
