// Package statuspage serves pullwake's read-only status page at /status/:
// runners and their liveness, entities with their status and active claim,
// the recent wakes, and the claims that need an operator's eye (leaked or
// expired). The page is plain HTML, CSS and JavaScript modules embedded
// in the binary (static/), with no build step and no framework.
//
// The page reads nothing but shapes: it follows runners,
// runner_runtime_diagnostics, entities and entity_dispatch_state over
// pullwake's shape endpoint (/v1/shape, Electric's sync protocol,
// server/shapes) and renders the rows it holds, live. It never calls the
// REST routes and never writes. The history of wakes and claims is not a
// shape (the shape feed keeps whole tables in memory, and those tables
// grow with the traffic), so the page shows each entity's outstanding
// wake and active claim, not past ones.
//
// The follower (static/shape.js) is a small module of its own rather than
// a vendored build of @electric-sql/client. The client is Apache-2.0, so
// its license would allow serving a copy, but its ESM build is not one
// file: it imports @microsoft/fetch-event-source and splits into chunks,
// so vendoring it means bundling, which is the build step the page does
// without. The page needs a fraction of the protocol: the initial fetch
// (offset=-1), following the handle and offset, long-poll live requests
// with the cursor, insert/update/delete messages, up-to-date, and
// must-refetch (a 409 or the control message: drop the rows, start over
// on the new handle). That is about a hundred lines. Conformance of the
// endpoint to the real client is proved elsewhere: test/shapeclient runs
// @electric-sql/client against it.
//
// Auth: the page sends no credential until the shape endpoint answers
// 401; then it asks for the admin token, keeps it in sessionStorage (this
// tab only, gone when it closes) and sends it as `Authorization: Bearer`,
// as the REST routes take it. A dev-mode server (no admin token) never
// asks.
//
// What this package must not do: read the database or serve data. It
// serves the embedded files, with an ETag each so a reload is a 304, and a
// Content-Security-Policy that lets the page talk to its own origin only.
package statuspage
