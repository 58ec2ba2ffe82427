package migrate_test

import (
	"context"
	"io/fs"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/internal/migrate"
	"github.com/pullwake/pullwake/internal/testdb"
	"github.com/pullwake/pullwake/migrations"
)

// embedded lists the versions of the embedded migrations, in order.
func embedded(t *testing.T) []int64 {
	t.Helper()
	names, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	var out []int64
	for _, n := range names {
		v, err := strconv.ParseInt(strings.SplitN(n, "_", 2)[0], 10, 64)
		if err != nil {
			t.Fatalf("migration %s: %v", n, err)
		}
		out = append(out, v)
	}
	slices.Sort(out)
	if len(out) == 0 {
		t.Fatal("no embedded migrations")
	}
	return out
}

// userObjects counts the tables, sequences, views and functions in public
// other than goose's own bookkeeping table.
func userObjects(t *testing.T, ctx context.Context, pool *pgxpool.Pool) (rels, funcs int) {
	t.Helper()
	err := pool.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
		         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'S', 'v', 'm', 'p')
		           AND c.relname NOT LIKE 'goose_db_version%'),
		       (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
		         WHERE n.nspname = 'public')`).Scan(&rels, &funcs)
	if err != nil {
		t.Fatal(err)
	}
	return rels, funcs
}

func wantStatus(t *testing.T, ctx context.Context, m *migrate.Migrator, want []int64, applied bool) {
	t.Helper()
	st, err := m.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []int64
	for _, s := range st {
		got = append(got, s.Version)
		if s.Applied != applied || (applied && s.At == "") {
			t.Fatalf("status of %d (%s): applied=%v at=%q, want applied=%v", s.Version, s.Path, s.Applied, s.At, applied)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("status lists %v, want %v", got, want)
	}
}

// Up, down to zero and up again: every down migration removes exactly what
// its up created, and the schema comes back whole.
func TestRoundTrip(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	tdb := testdb.Empty(t)
	m, err := migrate.New(tdb.Pool)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	all := embedded(t)
	latest := all[len(all)-1]
	reversed := slices.Clone(all)
	slices.Reverse(reversed)

	cur, lat, err := m.Versions(ctx)
	if err != nil || cur != 0 || lat != latest {
		t.Fatalf("versions on an empty database: current %d latest %d err %v, want 0 %d", cur, lat, err, latest)
	}
	wantStatus(t, ctx, m, all, false)

	for round := 1; round <= 2; round++ {
		got, err := m.Up(ctx)
		if err != nil || !slices.Equal(got, all) {
			t.Fatalf("round %d: up applied %v err %v, want %v", round, got, err, all)
		}
		wantStatus(t, ctx, m, all, true)
		if cur, lat, err := m.Versions(ctx); err != nil || cur != latest || lat != latest {
			t.Fatalf("round %d: versions current %d latest %d err %v, want %d", round, cur, lat, err, latest)
		}
		// The schema works: the lifecycle functions run.
		if _, err := tdb.Pool.Exec(ctx, `SELECT * FROM spawn_entity('/chat/rt')`); err != nil {
			t.Fatalf("round %d: spawn after up: %v", round, err)
		}
		if got, err := m.Up(ctx); err != nil || len(got) != 0 {
			t.Fatalf("round %d: second up applied %v err %v, want nothing", round, got, err)
		}

		got, err = m.DownTo(ctx, 0)
		if err != nil || !slices.Equal(got, reversed) {
			t.Fatalf("round %d: down to 0 rolled back %v err %v, want %v", round, got, err, reversed)
		}
		wantStatus(t, ctx, m, all, false)
		if rels, funcs := userObjects(t, ctx, tdb.Pool); rels != 0 || funcs != 0 {
			t.Fatalf("round %d: after down to 0, %d relations and %d functions remain", round, rels, funcs)
		}
		if cur, _, err := m.Versions(ctx); err != nil || cur != 0 {
			t.Fatalf("round %d: current version after down %d err %v", round, cur, err)
		}
	}
}

// Down rolls back one migration at a time.
func TestDownOneStep(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	tdb := testdb.Empty(t)
	m, err := migrate.New(tdb.Pool)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	all := embedded(t)
	if _, err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	for i := len(all) - 1; i >= 0; i-- {
		got, err := m.Down(ctx)
		if err != nil || !slices.Equal(got, []int64{all[i]}) {
			t.Fatalf("down: %v err %v, want [%d]", got, err, all[i])
		}
		var want int64
		if i > 0 {
			want = all[i-1]
		}
		if cur, _, err := m.Versions(ctx); err != nil || cur != want {
			t.Fatalf("after down: current %d err %v, want %d", cur, err, want)
		}
	}
}

// Two migrators racing on one database (two servers starting at once): the
// session locker serializes them, each migration is applied exactly once.
func TestConcurrentUp(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	tdb := testdb.Empty(t)
	all := embedded(t)
	var wg sync.WaitGroup
	results := make([][]int64, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := migrate.New(tdb.Pool)
			if err != nil {
				errs[i] = err
				return
			}
			defer m.Close()
			results[i], errs[i] = m.Up(ctx)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("migrator %d: %v", i, err)
		}
	}
	got := append(slices.Clone(results[0]), results[1]...)
	slices.Sort(got)
	if !slices.Equal(got, all) {
		t.Fatalf("applied %v and %v, want each of %v exactly once", results[0], results[1], all)
	}
}
