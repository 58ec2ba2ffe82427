// Command sqlmigration writes the goose migration that brings migrations/
// up to sql/: `make migration name=short_name` runs it. It creates a
// scratch database on the PostgreSQL server of its -admin URL (the Makefile
// passes scripts/testdb-url.sh's), migrates it with the files of
// migrations/, compares every function, trigger and view with the sql/
// files, writes migrations/<next>_<name>.sql (Up: sql/'s definitions of
// what differs; Down: the previous ones), proves it by applying it and
// rolling it back, and drops the scratch database. See internal/sqlsource.
package main

import (
	"context"
	"flag"
	"fmt"
	"net/url"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/internal/sqlsource"
)

func main() {
	admin := flag.String("admin", os.Getenv("PULLWAKE_TEST_DATABASE_URL"), "URL of a maintenance database (a superuser's) on the server to use")
	name := flag.String("name", "", "the migration's name: migrations/<next version>_<name>.sql")
	migrations := flag.String("migrations", "migrations", "the goose migrations")
	sqlDir := flag.String("sql", "sql", "the source files of the functions, triggers and views")
	flag.Parse()
	if *admin == "" || *name == "" || flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "usage: sqlmigration -admin URL -name short_name [-migrations dir] [-sql dir]")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	path, changes, err := run(ctx, *admin, *migrations, *sqlDir, *name)
	if err != nil {
		fmt.Fprintln(os.Stderr, "make migration:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s (goose applied and rolled it back on a scratch database):\n", path)
	for _, c := range changes {
		fmt.Println("  " + c.What())
	}
	fmt.Println("next: make schema && make generate, then commit sql/, the migration, sql/schema.sql and db/")
}

func run(ctx context.Context, admin, migrations, sqlDir, name string) (string, []sqlsource.Change, error) {
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return "", nil, fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	db := fmt.Sprintf("pw_sqlmigration_%d", os.Getpid())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+db); err != nil {
		return "", nil, fmt.Errorf("create scratch database: %w", err)
	}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if _, err := conn.Exec(dctx, "DROP DATABASE IF EXISTS "+db+" WITH (FORCE)"); err != nil {
			fmt.Fprintf(os.Stderr, "make migration: drop scratch database %s: %v\n", db, err)
		}
	}()
	pool, err := pgxpool.New(ctx, withDatabase(admin, db))
	if err != nil {
		return "", nil, fmt.Errorf("open scratch database: %w", err)
	}
	defer pool.Close() // before the database is dropped
	return sqlsource.Generate(ctx, pool, migrations, sqlDir, name, "make migration name="+name)
}

// withDatabase returns u with its database name replaced.
func withDatabase(u, name string) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	p.Path = "/" + name
	return p.String()
}
