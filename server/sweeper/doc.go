// Package sweeper runs pullwake's background passes against the database:
// lease expiry (sweep_claims, then the expired claims' write tokens are
// dropped), the wake-event backstop (sweep_wake_events), and housekeeping
// (the claim queue's vacuum, the retention purge of ended claims, finished
// wakes and their wake events), each bounded in batch size and time.
//
// It owns when those passes run and how their work is split into batches;
// every decision about a claim or a wake is the SQL function's. It must
// never end a claim or queue a wake itself, and never drop a write token
// that the database did not just report ended (ClearIfOwner only).
package sweeper
