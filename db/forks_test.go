package db_test

// SQL-level tests of stream forks (migrations/00010_stream_forks.sql), with
// time pinned through p_now: expiry of a fork and of its source.

import (
	"fmt"
	"testing"
	"time"
)

// mkStream creates a text/plain stream with one message "<path>" at now.
func (f *fixture) mkStream(path string, ttl *int64, now time.Time) {
	f.t.Helper()
	f.exec(`SELECT * FROM pw_stream_create('default', $1, 'text/plain', $2, NULL, false, ARRAY[convert_to($1, 'UTF8')], $3)`,
		path, ttl, now)
}

// fork forks src at its tail into path with the given TTL (nil: inherit).
func (f *fixture) fork(path, src string, ttl *int64, now time.Time) string {
	f.t.Helper()
	var status string
	err := f.pool.QueryRow(f.ctx, `SELECT status FROM pw_stream_fork('default', $1, $2, NULL, 0, NULL, $3, NULL, false, '{}', $4)`,
		path, src, ttl, now).Scan(&status)
	if err != nil {
		f.t.Fatalf("fork %s of %s: %v", path, src, err)
	}
	return status
}

// read reads path from the start at now: status and the bytes.
func (f *fixture) read(path string, now time.Time) (string, string) {
	f.t.Helper()
	var status string
	var data [][]byte
	err := f.pool.QueryRow(f.ctx, `SELECT status, coalesce(data, '{}') FROM pw_stream_read('default', $1, 0, 1000, 1048576, true, $2)`,
		path, now).Scan(&status, &data)
	if err != nil {
		f.t.Fatalf("read %s: %v", path, err)
	}
	var s string
	for _, d := range data {
		s += string(d)
	}
	return status, s
}

func (f *fixture) write(path string, now time.Time) string {
	f.t.Helper()
	var status string
	err := f.pool.QueryRow(f.ctx, `SELECT status FROM pw_stream_write('default', $1, 'text/plain', ARRAY['w'::bytea], false, NULL, NULL, NULL, NULL, $2)`,
		path, now).Scan(&status)
	if err != nil {
		f.t.Fatalf("write %s: %v", path, err)
	}
	return status
}

func (f *fixture) rows(sql string, args ...any) int64 {
	f.t.Helper()
	var n int64
	if err := f.pool.QueryRow(f.ctx, sql, args...).Scan(&n); err != nil {
		f.t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func ptr[T any](v T) *T { return &v }

// An expired source with a live fork is gone (410) and kept for the fork;
// the fork's reads do not keep the source alive; once the fork expires the
// source is garbage and a PUT at either path collects both.
func TestForkOutlivesExpiredSource(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.mkStream("/s", ptr[int64](10), at(0))
	if st := f.fork("/f", "/s", ptr[int64](100), at(0)); st != "created" {
		t.Fatalf("fork: %s", st)
	}
	if st := f.fork("/g", "/s", nil, at(0)); st != "created" {
		t.Fatalf("fork inheriting the TTL: %s", st)
	}
	if ttl := f.rows(`SELECT ttl_seconds FROM streams WHERE path = '/g'`); ttl != 10 {
		t.Fatalf("inherited TTL %d, want 10", ttl)
	}
	// Reading the fork at 8 s restarts the fork's window, not the source's.
	if st, s := f.read("/f", at(8*sec)); st != "ok" || s != "/s" {
		t.Fatalf("fork read: %s %q", st, s)
	}
	if st, _ := f.read("/s", at(15*sec)); st != "gone" {
		t.Fatalf("expired source with a live fork: %s, want gone", st)
	}
	if st := f.write("/s", at(15*sec)); st != "gone" {
		t.Fatalf("write to the expired source: %s, want gone", st)
	}
	if f.rows(`SELECT count(*) FROM streams WHERE path = '/s' AND deleted_at IS NOT NULL`) != 1 {
		t.Fatal("the expired source was not soft-deleted")
	}
	if st := f.fork("/h", "/s", nil, at(15*sec)); st != "source_gone" {
		t.Fatalf("fork of the soft-deleted source: %s", st)
	}
	if st, s := f.read("/f", at(15*sec)); st != "ok" || s != "/s" {
		t.Fatalf("fork read after the source expired: %s %q", st, s)
	}
	// /g (TTL 10 from 0) and /f (TTL 100 from 15) are expired at 200 s:
	// nothing reads /s any more.
	if st, _ := f.read("/s", at(200*sec)); st != "not_found" {
		t.Fatalf("source whose forks expired: %s, want not_found", st)
	}
	if st, _ := f.read("/f", at(200*sec)); st != "not_found" {
		t.Fatalf("expired fork: %s", st)
	}
	var st string
	if err := f.pool.QueryRow(f.ctx, `SELECT status FROM pw_stream_create('default', '/s', 'text/plain', NULL, NULL, false, '{}', $1)`,
		at(200*sec)).Scan(&st); err != nil || st != "created" {
		t.Fatalf("re-create the source: %s %v", st, err)
	}
	if n := f.rows(`SELECT count(*) FROM streams`); n != 1 {
		t.Fatalf("%d streams left, want the new /s", n)
	}
	if n := f.rows(`SELECT count(*) FROM stream_messages`); n != 0 {
		t.Fatalf("%d messages left", n)
	}
}

// An expired fork no longer keeps its soft-deleted source: deleting the
// source again collects both.
func TestExpiredForkReleasesSource(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.mkStream("/s", nil, at(0))
	f.fork("/f", "/s", ptr[int64](1), at(0))
	var st string
	if err := f.pool.QueryRow(f.ctx, `SELECT pw_stream_delete('default', '/s', $1)`, at(0)).Scan(&st); err != nil || st != "deleted" {
		t.Fatalf("delete: %s %v", st, err)
	}
	if st, _ := f.read("/s", at(0)); st != "gone" {
		t.Fatalf("soft-deleted source: %s", st)
	}
	if err := f.pool.QueryRow(f.ctx, `SELECT pw_stream_delete('default', '/s', $1)`, at(5*sec)).Scan(&st); err != nil || st != "not_found" {
		t.Fatalf("delete after the fork expired: %s %v, want not_found", st, err)
	}
	if n := f.rows(`SELECT count(*) FROM streams`) + f.rows(`SELECT count(*) FROM stream_messages`); n != 0 {
		t.Fatalf("%d rows left", n)
	}
}

// Deleting a source and its fork at the same time, and forking a stream
// while it is deleted, never deadlocks or fails, and leaves nothing behind
// once both are deleted.
func TestForkConcurrentDeletes(t *testing.T) {
	t.Parallel()
	f := setup(t)
	for i := range 30 {
		s, k, g := fmt.Sprintf("/s%d", i), fmt.Sprintf("/f%d", i), fmt.Sprintf("/g%d", i)
		f.mkStream(s, nil, at(0))
		f.fork(k, s, nil, at(0))
		errs := make(chan error, 3)
		for _, p := range []string{s, k} {
			go func() {
				_, err := f.pool.Exec(f.ctx, `SELECT pw_stream_delete('default', $1)`, p)
				errs <- err
			}()
		}
		go func() {
			_, err := f.pool.Exec(f.ctx, `SELECT * FROM pw_stream_fork('default', $1, $2, NULL, 0, NULL, NULL, NULL, false, '{}')`, g, k)
			errs <- err
		}()
		for range 3 {
			if err := <-errs; err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
		}
		// The fork of the fork may have been made before the fork's delete
		// (then the fork and the source are kept for it) or refused after.
		f.exec(`SELECT pw_stream_delete('default', $1)`, g)
		if n := f.rows(`SELECT count(*) FROM streams`) + f.rows(`SELECT count(*) FROM stream_messages`); n != 0 {
			t.Fatalf("round %d: %d rows left", i, n)
		}
	}
}
