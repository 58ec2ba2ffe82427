package streams

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/testdb"
)

// BenchmarkForkChainRead compares reading a fork at the end of a chain of 8
// forks with reading a plain stream holding the same messages: both hold
// 9 × per messages of 100 bytes; in the chain the root and each of the 8
// forks hold per of them (each fork forked at its parent's tail), so a read
// from the start crosses 9 segments. One op reads the whole stream from
// offset -1 in chunks, as a catch-up client does, through pw_stream_read;
// an op reads both streams, and the medians and their ratio are reported.
//
//	go test ./server/streams -run '^$' -bench ForkChainRead -benchtime 300x -count 3
func BenchmarkForkChainRead(b *testing.B) {
	for _, per := range []int{111, 1000} {
		d := testdb.New(b)
		ctx := context.Background()
		exec := func(sql string, args ...any) {
			if _, err := d.Pool.Exec(ctx, sql, args...); err != nil {
				b.Fatalf("%s: %v", sql, err)
			}
		}
		fill := func(path string, from, n int) {
			exec(`INSERT INTO stream_messages (tenant_id, path, seq, data)
			      SELECT 'default', $1, i, convert_to(rpad('{"i":' || i || ',"pad":"', 98, 'x') || '"}', 'UTF8')
			        FROM generate_series($2::bigint, $3::bigint) i`, path, from, from+n-1)
			exec(`UPDATE streams SET tail_seq = $2 WHERE path = $1`, path, from+n-1)
		}
		exec(`SELECT pw_stream_create('default', '/v1/stream/root', 'application/json', NULL, NULL, false, '{}')`)
		fill("/v1/stream/root", 1, 9*per)
		exec(`SELECT pw_stream_create('default', '/v1/stream/c0', 'application/json', NULL, NULL, false, '{}')`)
		fill("/v1/stream/c0", 1, per)
		for i := 1; i <= 8; i++ {
			p := fmt.Sprintf("/v1/stream/c%d", i)
			exec(`SELECT pw_stream_fork('default', $1, $2, NULL, 0, NULL, NULL, NULL, false, '{}')`, p, fmt.Sprintf("/v1/stream/c%d", i-1))
			fill(p, i*per+1, per)
		}
		exec(`VACUUM ANALYZE stream_messages`)
		exec(`VACUUM ANALYZE streams`)
		q := db.New()
		readAll := func(b *testing.B, path string) {
			after, n := int64(0), 0
			for {
				row, err := q.StreamRead(ctx, d.Pool, db.StreamReadParams{
					TenantID: "default", Path: path, After: &after, MaxRows: readMaxRows, MaxBytes: readMaxBytes,
				})
				if err != nil {
					b.Fatal(err)
				}
				n += len(row.Data)
				after = row.LastSeq
				if after >= row.TailSeq {
					break
				}
			}
			if n != 9*per {
				b.Fatalf("read %d messages of %s, want %d", n, path, 9*per)
			}
		}
		// Root and chain reads alternate within one loop, so both see the
		// same load (the machine is shared); the medians and their ratio
		// are reported.
		b.Run(fmt.Sprintf("msgs=%d", 9*per), func(b *testing.B) {
			b.ReportAllocs()
			var root, chain []time.Duration
			i := 0
			for b.Loop() {
				for k := range 2 {
					p, into := "/v1/stream/root", &root
					if (i+k)%2 == 1 {
						p, into = "/v1/stream/c8", &chain
					}
					start := time.Now()
					readAll(b, p)
					*into = append(*into, time.Since(start))
				}
				i++
			}
			slices.Sort(root)
			slices.Sort(chain)
			r, c := root[len(root)/2], chain[len(chain)/2]
			b.ReportMetric(float64(r.Microseconds()), "root-µs")
			b.ReportMetric(float64(c.Microseconds()), "chain8-µs")
			b.ReportMetric(float64(c)/float64(r), "chain8/root")
		})
	}
}
