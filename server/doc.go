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
// The handlers of the lifecycle routes and of Electric's dialect stay in
// this one package: they share the entity encoding and the Server's
// credentials and hooks (after a send, after a release), so a split would
// only move those behind exported names.
package server
