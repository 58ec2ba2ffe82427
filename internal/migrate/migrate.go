// Package migrate runs pullwake's embedded goose migrations against a pgx
// pool, under a PostgreSQL advisory-lock session locker so that two
// processes never migrate at once.
package migrate

import (
	"context"
	"database/sql"
	"fmt"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/pullwake/pullwake/migrations"
)

// Migrator wraps a goose provider over the embedded migrations.
type Migrator struct {
	db       *sql.DB
	provider *goose.Provider
}

// New returns a Migrator using pool. Close it when done; the pool stays open.
func New(pool *pgxpool.Pool) (*Migrator, error) {
	db := stdlib.OpenDBFromPool(pool)
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("create migration locker: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS, goose.WithSessionLocker(locker))
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("create migration provider: %w", err)
	}
	return &Migrator{db: db, provider: p}, nil
}

// Close releases the migrator's database handle.
func (m *Migrator) Close() error { return m.db.Close() }

// Up applies every pending migration and returns the versions applied.
func (m *Migrator) Up(ctx context.Context) ([]int64, error) {
	res, err := m.provider.Up(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate up: %w", err)
	}
	return versions(res), nil
}

// Down rolls back the newest applied migration.
func (m *Migrator) Down(ctx context.Context) ([]int64, error) {
	res, err := m.provider.Down(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate down: %w", err)
	}
	return versions([]*goose.MigrationResult{res}), nil
}

// DownTo rolls back to version (0 = empty schema).
func (m *Migrator) DownTo(ctx context.Context, version int64) ([]int64, error) {
	res, err := m.provider.DownTo(ctx, version)
	if err != nil {
		return nil, fmt.Errorf("migrate down to %d: %w", version, err)
	}
	return versions(res), nil
}

// Status is one migration's state.
type Status struct {
	Version int64
	Path    string
	Applied bool
	At      string
}

// Status lists every embedded migration with whether it is applied.
func (m *Migrator) Status(ctx context.Context) ([]Status, error) {
	st, err := m.provider.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("migration status: %w", err)
	}
	out := make([]Status, 0, len(st))
	for _, s := range st {
		x := Status{Version: s.Source.Version, Path: s.Source.Path, Applied: s.State == goose.StateApplied}
		if x.Applied {
			x.At = s.AppliedAt.UTC().Format("2006-01-02 15:04:05Z")
		}
		out = append(out, x)
	}
	return out, nil
}

// Versions returns the database's current version and the newest embedded one.
func (m *Migrator) Versions(ctx context.Context) (current, latest int64, err error) {
	current, latest, err = m.provider.GetVersions(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("migration versions: %w", err)
	}
	return current, latest, nil
}

func versions(res []*goose.MigrationResult) []int64 {
	out := make([]int64, 0, len(res))
	for _, r := range res {
		if r != nil && r.Source != nil {
			out = append(out, r.Source.Version)
		}
	}
	return out
}
