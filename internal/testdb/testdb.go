// Package testdb gives each test its own PostgreSQL database, cloned from a
// migrated template database (one per migration content hash), so tests run
// in parallel without seeing each other's rows.
//
// The cloning is github.com/peterldowns/pgtestdb (template per migrator
// hash, a fresh instance per test, dropped when the test passes and kept for
// inspection when it fails); this package only adds what pullwake's tests
// need around it: finding or starting a PostgreSQL server, a Migrator that
// applies the embedded migrations through internal/migrate (goose), and a
// pgx pool on the new database.
//
// The server it uses: PULLWAKE_TEST_DATABASE_URL when set; else the one on
// 127.0.0.1:5432 when it answers (unless PULLWAKE_TEST_PRIVATE=1); else a
// private cluster under .data/pgtest of the repository, started with
// scripts/pg.sh from the installed PostgreSQL binaries. Tests connect as the
// user of that URL (a superuser: fault tests terminate backends).
package testdb

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx", for pgtestdb
	"github.com/peterldowns/pgtestdb"

	"github.com/pullwake/pullwake/internal/migrate"
	"github.com/pullwake/pullwake/migrations"
)

// PrivatePort is the port of the private test cluster.
const PrivatePort = "55433"

// LogicalPort is the port of the private cluster with wal_level=logical
// (.data/pgtest-logical), for the tests of logical decoding.
const LogicalPort = "55434"

var (
	adminOnce sync.Once
	adminURL  string
	adminErr  error

	logicalOnce sync.Once
	logicalURL  string
	logicalErr  error
)

// DB is one test's database.
type DB struct {
	Pool *pgxpool.Pool
	URL  string // connection string of this database
	Name string
}

// New creates a fresh migrated database for t and drops it when t ends.
func New(t testing.TB) *DB { t.Helper(); return open(t, Migrator{}, AdminURL) }

// Empty creates a fresh database with no migrations applied.
func Empty(t testing.TB) *DB { t.Helper(); return open(t, pgtestdb.NoopMigrator{}, AdminURL) }

// NewLogical creates a fresh migrated database on a server with
// wal_level=logical (LogicalAdminURL), for tests of logical decoding.
func NewLogical(t testing.TB) *DB {
	t.Helper()
	d := open(t, Migrator{Server: "logical"}, LogicalAdminURL)
	// Runs after the test's own cleanups (its servers stopped) and before
	// pgtestdb drops the database, which PostgreSQL refuses while a
	// replication slot of it is active: a walsender whose client has gone
	// can outlive it by a moment on a loaded machine.
	t.Cleanup(func() { releaseSlots(t, d.Name) })
	return d
}

// releaseSlots waits until no replication slot of database name is active,
// ending the walsenders that still hold one, for at most 10 s.
func releaseSlots(t testing.TB, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	admin, err := LogicalAdminURL(ctx)
	if err != nil {
		return // open failed the test already
	}
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Logf("testdb: release slots of %s: %v", name, err)
		return
	}
	defer conn.Close(context.Background())
	for {
		var active int
		err := conn.QueryRow(ctx, `SELECT count(pg_terminate_backend(s.active_pid))
		                             FROM pg_replication_slots s
		                            WHERE s.database = $1 AND s.active`, name).Scan(&active)
		if err != nil {
			t.Logf("testdb: release slots of %s: %v", name, err)
			return
		}
		if active == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Logf("testdb: %d replication slots of %s still active after 10 s", active, name)
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func open(t testing.TB, m pgtestdb.Migrator, adminOf func(context.Context) (string, error)) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin, err := adminOf(ctx)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	conf, err := config(admin)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	inst := pgtestdb.Custom(quietTB{t}, conf, m)
	u := WithDatabase(admin, inst.Database)
	pool, err := pgxpool.New(ctx, u)
	if err != nil {
		t.Fatalf("testdb: open pool: %v", err)
	}
	t.Cleanup(pool.Close) // runs before pgtestdb drops the database
	// pgtestdb keeps a failed test's database; say which, so it can be
	// opened (psql) without searching for it.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("testdb: the database of this failed test is kept for inspection: %s", redact(u))
		}
	})
	return &DB{Pool: pool, URL: u, Name: inst.Database}
}

// quietTB drops pgtestdb's per-test log line (the instance URL).
type quietTB struct{ testing.TB }

func (quietTB) Logf(string, ...any) {}

// config is pgtestdb's view of the admin URL: the same user (no separate
// test role), connections terminated before a database is dropped (fault
// tests leave killed servers' sessions behind).
func config(admin string) (pgtestdb.Config, error) {
	u, err := url.Parse(admin)
	if err != nil {
		return pgtestdb.Config{}, fmt.Errorf("parse %s: %w", redact(admin), err)
	}
	pw, _ := u.User.Password()
	port := u.Port()
	if port == "" {
		port = "5432"
	}
	return pgtestdb.Config{
		DriverName: "pgx", Host: u.Hostname(), Port: port, User: u.User.Username(), Password: pw,
		Database: strings.TrimPrefix(u.Path, "/"), Options: u.RawQuery,
		TestRole:                  &pgtestdb.Role{Username: u.User.Username(), Password: pw},
		ForceTerminateConnections: true,
	}, nil
}

// Migrator applies the embedded migrations (internal/migrate, goose) to
// pgtestdb's template; its hash is the migrations' content, so worktrees
// with different migrations get different templates.
//
// Server names the cluster the template lives on ("" the test server,
// "logical" the wal_level=logical one). pgtestdb makes each template once
// per test binary, keyed by the hash alone, not by server: without the
// name in the hash, a binary using both clusters made the template on the
// first one it met and then cloned a template the second never had.
type Migrator struct{ Server string }

// Hash is the SHA-256 of the server's name and every embedded migration's
// name and content.
func (m Migrator) Hash() (string, error) {
	h := sha256.New()
	h.Write([]byte(m.Server + "\x00"))
	err := fs.WalkDir(migrations.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(migrations.FS, p)
		h.Write([]byte(p))
		h.Write(b)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("hash migrations: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// Migrate runs goose up on the template database.
func (Migrator) Migrate(ctx context.Context, _ *sql.DB, conf pgtestdb.Config) error {
	pool, err := pgxpool.New(ctx, conf.URL())
	if err != nil {
		return fmt.Errorf("open template: %w", err)
	}
	defer pool.Close()
	m, err := migrate.New(pool)
	if err != nil {
		return err
	}
	defer m.Close()
	_, err = m.Up(ctx)
	return err
}

// AdminURL returns the URL of a maintenance database on the test server,
// starting a private cluster when no server answers.
func AdminURL(ctx context.Context) (string, error) {
	adminOnce.Do(func() { adminURL, adminErr = findAdmin(ctx) })
	return adminURL, adminErr
}

// LogicalAdminURL returns the URL of a maintenance database on a server
// with wal_level=logical: PULLWAKE_TEST_LOGICAL_DATABASE_URL when set,
// else a private cluster under .data/pgtest-logical of the repository
// (port 55434), started once (scripts/pg.sh holds a file lock, so test
// binaries running at once share it) with wal_level=logical from the
// installed PostgreSQL binaries. The system PostgreSQL is not used: its
// wal_level is the default, replica.
func LogicalAdminURL(ctx context.Context) (string, error) {
	logicalOnce.Do(func() { logicalURL, logicalErr = findLogical(ctx) })
	return logicalURL, logicalErr
}

func findLogical(ctx context.Context) (string, error) {
	if u := os.Getenv("PULLWAKE_TEST_LOGICAL_DATABASE_URL"); u != "" {
		return u, ping(ctx, u)
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "pg.sh"), "ensure",
		filepath.Join(root, ".data", "pgtest-logical"), LogicalPort, "logical")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("start the private wal_level=logical cluster: %w: %s", err, stderr.String())
	}
	u := strings.TrimSpace(string(out))
	return u, ping(ctx, u)
}

func findAdmin(ctx context.Context) (string, error) {
	if u := os.Getenv("PULLWAKE_TEST_DATABASE_URL"); u != "" {
		return u, ping(ctx, u)
	}
	if os.Getenv("PULLWAKE_TEST_PRIVATE") != "1" {
		u := "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
		if ping(ctx, u) == nil {
			return u, nil
		}
	}
	root, err := RepoRoot()
	if err != nil {
		return "", err
	}
	out, err := exec.CommandContext(ctx, filepath.Join(root, "scripts", "pg.sh"), "ensure",
		filepath.Join(root, ".data", "pgtest"), PrivatePort).Output()
	if err != nil {
		return "", fmt.Errorf("start private cluster: %w", err)
	}
	u := strings.TrimSpace(string(out))
	return u, ping(ctx, u)
}

// RepoRoot finds the repository root (the folder holding go.mod).
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// WithDatabase returns u with its database name replaced.
func WithDatabase(u, name string) string {
	p, err := url.Parse(u)
	if err != nil {
		return u
	}
	p.Path = "/" + name
	return p.String()
}

func ping(ctx context.Context, u string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		return fmt.Errorf("connect %s: %w", redact(u), err)
	}
	defer conn.Close(context.Background())
	return conn.Ping(ctx)
}

func redact(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(unparsable url)"
	}
	return p.Redacted()
}
