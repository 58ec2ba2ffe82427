package bench

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"
)

// walPoint is the cluster's write-ahead log position and counters at one
// moment. ok is false when they could not be read (pg_stat_wal needs
// PostgreSQL 14).
type walPoint struct {
	ok      bool
	lsn     int64 // bytes since the log's start
	records int64
	fpi     int64 // full-page images
	syncs   int64 // WAL flushes (fsync/fdatasync calls)
}

// walDelta is the WAL one mode wrote.
type walDelta struct {
	ok                  bool
	bytes, records, fpi int64
	syncs               int64
}

// readWAL reads the current position and pg_stat_wal's counters. It is best
// effort: a failure leaves the point unset and the report silent.
func readWAL(ctx context.Context, pool *pgxpool.Pool) walPoint {
	var p walPoint
	err := pool.QueryRow(ctx, `
		SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, w.wal_records, w.wal_fpi, w.wal_sync
		  FROM pg_stat_wal w`).Scan(&p.lsn, &p.records, &p.fpi, &p.syncs)
	p.ok = err == nil
	return p
}

func (p walPoint) minus(q walPoint) walDelta {
	if !p.ok || !q.ok {
		return walDelta{}
	}
	return walDelta{ok: true, bytes: p.lsn - q.lsn, records: p.records - q.records,
		fpi: p.fpi - q.fpi, syncs: p.syncs - q.syncs}
}
