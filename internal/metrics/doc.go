// Package metrics holds pullwake's Prometheus instruments: one registry per
// server (never the global default one), the counters and histograms the
// server bumps on its hot paths, and a collector that serves the claim state
// the server's sweeper last read from PostgreSQL (RefreshClaimGauges).
//
// What it must not do: decide anything. The server calls ClaimStarted,
// Released, Expired and Appended after the SQL functions have answered, the
// push worker PushDelivery after a delivery's answer, and every route of the
// HTTP server is wrapped once by InstrumentHTTP; the metrics only count what
// happened. Recording never touches the database and never blocks, and
// neither does a scrape of /metrics: it serves a snapshot, so anonymous
// scrapers cannot make the database count claims. The sweeper refreshes the
// snapshot (active and leaked claims and the queued wakes after every pass,
// through indexes, the queued wakes counted up to a cap; ended claims, which
// means reading the history, about once a minute from its housekeeping
// loop).
//
// Labels take values from fixed sets only (a route is a pattern the server
// registered, never a request's path), so the number of series stays
// bounded whatever clients send; TestPromlint holds the names and help
// texts to Prometheus' conventions.
package metrics
