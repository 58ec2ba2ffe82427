// Package shapes serves Electric's shape API (GET /v1/shape, the protocol
// @electric-sql/client speaks) for pullwake's control-plane tables:
// entities, entity types and runners in the columns Electric's agents
// server exposes, plus the tables pullwake has no rows for, served empty.
//
// The rows come from a change feed that costs the claim cycle nothing: a
// TEMPORARY logical replication slot (pgoutput, publication
// pullwake_shapes of migration 00023) created by the first shape request,
// whose exported snapshot gives the initial copy. The feed keeps one copy
// of each table in memory and a bounded log of recent transactions, with
// offsets <commit lsn>_<n>; it confirms positions as it goes so the slot
// retains no WAL, and it stops (its slot goes with its connection) after
// an idle period. Every shape reads the same copy and log, filtered by its
// where clause (a small SQL subset, evaluated in Go) and columns.
//
// A handle names a shape definition within one life of the feed: when
// the feed restarts (connection lost, idle, server restart) or a reader
// falls behind the log, handles answer 409 must-refetch and clients start
// again from a snapshot.
//
// What it must not do: write to the database, take locks the lifecycle
// functions wait on, or start anything before a shape is asked for.
// Authorization is the caller's (the server guards the route as it guards
// the REST lists).
package shapes
