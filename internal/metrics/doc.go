// Package metrics holds pullwake's Prometheus instruments: one registry per
// server (never the global default one), the counters and histograms the
// server bumps on its hot paths, and a collector that serves the claim state
// the server's sweeper last read from PostgreSQL (RefreshClaimGauges).
//
// What it must not do: decide anything. The server calls ClaimStarted,
// Released, Expired and Appended after the SQL functions have answered; the
// metrics only count what happened. Recording never touches the database and
// never blocks, and neither does a scrape of /metrics: it serves a snapshot,
// so anonymous scrapers cannot make the database count claims. The sweeper
// refreshes the snapshot (active and leaked claims after every pass, through
// the indexes of active claims; ended claims, which means reading the
// history, about once a minute from its housekeeping loop).
package metrics
