package sqlsource

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
)

// ErrNothingToDo is Generate's answer when sql/ and the migrations already
// define the same functions, triggers and views.
var ErrNothingToDo = errors.New("sql/ and migrations/ define the same functions, triggers and views: no migration to write")

var migrationName = regexp.MustCompile(`^[a-z0-9][a-z0-9_]*$`)

// Generate writes the migration that makes the migrations of
// migrationsDir define what the files of sqlDir define, named
// <next version>_<name>.sql, and returns its path and what it changes.
// pool is an empty scratch database: Generate migrates it with goose from
// migrationsDir, compares (Check), writes the file, and then proves it on
// the same database: goose applies it, Check must find nothing left, and
// its Down must restore every definition the migrations had. When the
// proof fails the file is removed. command is how the caller was invoked,
// for the file's header.
func Generate(ctx context.Context, pool *pgxpool.Pool, migrationsDir, sqlDir, name, command string) (string, []Change, error) {
	if !migrationName.MatchString(name) {
		return "", nil, fmt.Errorf("migration name %q: use lower case letters, digits and _", name)
	}
	files, err := Files(sqlDir)
	if err != nil {
		return "", nil, err
	}
	if err := gooseUp(ctx, pool, migrationsDir); err != nil {
		return "", nil, err
	}
	before, changes, err := Check(ctx, pool, files)
	if err != nil {
		return "", nil, err
	}
	if len(changes) == 0 {
		return "", nil, ErrNothingToDo
	}
	version, err := nextVersion(migrationsDir)
	if err != nil {
		return "", nil, err
	}
	path := filepath.Join(migrationsDir, fmt.Sprintf("%05d_%s.sql", version, name))
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return "", nil, fmt.Errorf("write migration: %w", err)
	}
	_, err = f.WriteString(Migration(command, changes))
	if err2 := f.Close(); err == nil {
		err = err2
	}
	if err == nil {
		err = prove(ctx, pool, migrationsDir, files, before)
	}
	if err != nil {
		os.Remove(path)
		return "", nil, fmt.Errorf("%s (removed): %w", path, err)
	}
	return path, changes, nil
}

// prove applies the new migration to the database the older ones built,
// checks it against the files, and rolls it back to before.
func prove(ctx context.Context, pool *pgxpool.Pool, migrationsDir string, files []File, before Catalog) error {
	p, closeDB, err := provider(pool, migrationsDir)
	if err != nil {
		return err
	}
	defer closeDB()
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("goose up: %w", err)
	}
	_, left, err := Check(ctx, pool, files)
	if err != nil {
		return fmt.Errorf("check after up: %w", err)
	}
	if len(left) > 0 {
		return fmt.Errorf("after its Up, sql/ still differs:\n%s", Report(left))
	}
	if _, err := p.Down(ctx); err != nil {
		return fmt.Errorf("goose down: %w", err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `SET LOCAL search_path TO public`); err != nil {
		return err
	}
	after, err := ReadCatalog(ctx, tx)
	if err != nil {
		return err
	}
	if !maps.EqualFunc(before, after, func(a, b Object) bool { return a.Def == b.Def }) {
		var diff []Change
		for _, k := range slices.Sorted(maps.Keys(before)) {
			if a, ok := after[k]; !ok || a.Def != before[k].Def {
				o := before[k]
				diff = append(diff, Change{Old: &o, New: ptr(after[k], ok)})
			}
		}
		for _, k := range slices.Sorted(maps.Keys(after)) {
			if _, ok := before[k]; !ok {
				o := after[k]
				diff = append(diff, Change{New: &o})
			}
		}
		return fmt.Errorf("its Down does not restore the previous definitions:\n%s", Report(diff))
	}
	return nil
}

func ptr(o Object, ok bool) *Object {
	if !ok {
		return nil
	}
	return &o
}

func gooseUp(ctx context.Context, pool *pgxpool.Pool, dir string) error {
	p, closeDB, err := provider(pool, dir)
	if err != nil {
		return err
	}
	defer closeDB()
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("goose up %s: %w", dir, err)
	}
	return nil
}

// provider is goose over the migration files on disk (not the embedded
// ones: a migration written a moment ago is among them).
func provider(pool *pgxpool.Pool, dir string) (*goose.Provider, func(), error) {
	db := stdlib.OpenDBFromPool(pool)
	p, err := goose.NewProvider(goose.DialectPostgres, db, os.DirFS(dir))
	if err != nil {
		db.Close()
		return nil, nil, fmt.Errorf("goose over %s: %w", dir, err)
	}
	return p, func() { db.Close() }, nil
}

var versioned = regexp.MustCompile(`^(\d+)_.*\.sql$`)

// nextVersion is one past the newest migration of dir.
func nextVersion(dir string) (int64, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("list migrations: %w", err)
	}
	var top int64
	for _, e := range entries {
		if m := versioned.FindStringSubmatch(e.Name()); m != nil {
			v, err := strconv.ParseInt(m[1], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("migration %s: %w", e.Name(), err)
			}
			top = max(top, v)
		}
	}
	return top + 1, nil
}
