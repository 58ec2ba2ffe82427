// Package testdb gives each test its own PostgreSQL database, cloned from a
// migrated template database (one per migration content hash), so tests run
// in parallel without seeing each other's rows.
//
// The server it uses: PULLWAKE_TEST_DATABASE_URL when set; else the one on
// 127.0.0.1:5432 when it answers (unless PULLWAKE_TEST_PRIVATE=1); else a
// private cluster under .data/pgtest of the repository, started with
// scripts/pg.sh from the installed PostgreSQL binaries.
package testdb

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
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

	"github.com/pullwake/pullwake/internal/migrate"
	"github.com/pullwake/pullwake/migrations"
)

// PrivatePort is the port of the private test cluster.
const PrivatePort = "55433"

var (
	adminOnce sync.Once
	adminURL  string
	adminErr  error
	tplOnce   sync.Once
	tplName   string
	tplErr    error
)

// DB is one test's database.
type DB struct {
	Pool *pgxpool.Pool
	URL  string // connection string of this database
	Name string
}

// New creates a fresh migrated database for t and drops it when t ends.
func New(t testing.TB) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin, err := AdminURL(ctx)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	tpl, err := template(ctx, admin)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	name := "pw_t_" + randHex(8)
	if err := exec1(ctx, admin, fmt.Sprintf("CREATE DATABASE %s TEMPLATE %s", name, tpl)); err != nil {
		t.Fatalf("testdb: clone template: %v", err)
	}
	u := WithDatabase(admin, name)
	pool, err := pgxpool.New(ctx, u)
	if err != nil {
		t.Fatalf("testdb: open pool: %v", err)
	}
	t.Cleanup(func() {
		pool.Close()
		dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer dcancel()
		if err := exec1(dctx, admin, fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", name)); err != nil {
			t.Logf("testdb: drop %s: %v", name, err)
		}
	})
	return &DB{Pool: pool, URL: u, Name: name}
}

// Empty creates a fresh database with no migrations applied.
func Empty(t testing.TB) *DB {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	admin, err := AdminURL(ctx)
	if err != nil {
		t.Fatalf("testdb: %v", err)
	}
	name := "pw_e_" + randHex(8)
	if err := exec1(ctx, admin, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("testdb: create: %v", err)
	}
	u := WithDatabase(admin, name)
	pool, err := pgxpool.New(ctx, u)
	if err != nil {
		t.Fatalf("testdb: open pool: %v", err)
	}
	t.Cleanup(func() {
		pool.Close()
		dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer dcancel()
		_ = exec1(dctx, admin, fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", name))
	})
	return &DB{Pool: pool, URL: u, Name: name}
}

// AdminURL returns the URL of a maintenance database on the test server,
// starting a private cluster when no server answers.
func AdminURL(ctx context.Context) (string, error) {
	adminOnce.Do(func() { adminURL, adminErr = findAdmin(ctx) })
	return adminURL, adminErr
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

func exec1(ctx context.Context, u, sql string) error {
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

// template returns the name of the migrated template database, creating it
// once per migration content hash. A session advisory lock serializes test
// processes that race to build it.
func template(ctx context.Context, admin string) (string, error) {
	tplOnce.Do(func() { tplName, tplErr = buildTemplate(ctx, admin) })
	return tplName, tplErr
}

func buildTemplate(ctx context.Context, admin string) (string, error) {
	h := sha256.New()
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
	name := "pw_tpl_" + hex.EncodeToString(h.Sum(nil))[:16]

	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return "", fmt.Errorf("connect admin: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock(727274)"); err != nil {
		return "", fmt.Errorf("lock template: %w", err)
	}
	defer conn.Exec(context.Background(), "SELECT pg_advisory_unlock(727274)") //nolint:errcheck

	var ready bool
	err = conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1 AND datistemplate)", name).Scan(&ready)
	if err != nil {
		return "", fmt.Errorf("look up template: %w", err)
	}
	if ready {
		return name, nil
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf("DROP DATABASE IF EXISTS %s WITH (FORCE)", name)); err != nil {
		return "", fmt.Errorf("drop half-built template: %w", err)
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("create template: %w", err)
	}
	pool, err := pgxpool.New(ctx, WithDatabase(admin, name))
	if err != nil {
		return "", fmt.Errorf("open template: %w", err)
	}
	m, err := migrate.New(pool)
	if err == nil {
		_, err = m.Up(ctx)
		m.Close()
	}
	pool.Close()
	if err != nil {
		return "", fmt.Errorf("migrate template: %w", err)
	}
	if _, err := conn.Exec(ctx, fmt.Sprintf("ALTER DATABASE %s WITH is_template true", name)); err != nil {
		return "", fmt.Errorf("mark template: %w", err)
	}
	return name, nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
