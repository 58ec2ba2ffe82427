// Package metrics holds pullwake's Prometheus instruments: one registry per
// server (never the global default one), the counters and histograms the
// server bumps on its hot paths, and a collector that reads claim state from
// PostgreSQL at scrape time.
//
// What it must not do: decide anything. The server calls ClaimStarted,
// Released, Expired and Appended after the SQL functions have answered; the
// metrics only count what happened. Recording never touches the database and
// never blocks; only a scrape of /metrics runs the (bounded) DB queries.
package metrics
