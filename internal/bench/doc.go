// Package bench is the load engine behind `pullwake bench`: it runs the
// claim → append → done cycle with N concurrent runners in several modes
// against one database and reports rates, per-step latency percentiles and
// the ratios between modes that docs/performance.md sets targets for.
//
// Modes (each on fresh data: its own runners and entities with queued work,
// in a tenant of its own unless pointed at a running server):
//
//	1 http      claim, append one 1 KiB JSON message, done with acks, over HTTP
//	2 sql       the same three steps as direct SQL calls with pgx (the
//	            lifecycle functions and the stream write the server uses)
//	3 sql-split claim and append as in 2, but the release as the system
//	            pullwake is modelled on does it: four autocommit statements
//	            (update claim, update dispatch slot, select entity, update
//	            entity status)
//	4 commit    a one-row UPDATE commit loop: the commit-rate ceiling
//	5 http-next as 1, but the done also claims the next wake
//	            ("claim_next": true): two commits per cycle instead of three
//	6 sql-next  as 2, with release_and_claim_next: mode 5 without HTTP
//	7 http-append  one append through HTTP with a held claim's write token
//	8 sql-insert   one plain single-row INSERT of the same message
//	9 live-claims  claims held without done up to a count; the server's RSS
//	10 sql-batch   every runner's claim, append and release as three
//	               set-based calls (claim_next_wakes, pw_stream_writes,
//	               release_claims) on one session: the ceiling of group
//	               commit on this schema
//
// HTTP modes also report the server's CPU per cycle and, when the server
// runs group commit, its batch sizes per transition (from its /metrics).
//
// It must not be used against a production database: it creates runners and
// entities (under /bench/...) and deletes them when each mode ends (unless
// Keep). Its load is bounded by the runner count and the duration of each
// mode; HTTP modes go to the given server or to one it starts on loopback.
package bench
