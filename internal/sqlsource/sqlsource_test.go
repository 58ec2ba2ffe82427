package sqlsource_test

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/pullwake/pullwake/internal/sqlsource"
	"github.com/pullwake/pullwake/internal/testdb"
)

func repoDir(t *testing.T, dir string) string {
	t.Helper()
	root, err := testdb.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(root, dir)
}

// The check of `make test`: the functions, triggers and views the
// migrations produce are those of sql/, definition for definition
// (pg_get_functiondef, pg_get_triggerdef, pg_get_viewdef), each in exactly
// one file.
func TestSQLSourceMatchesMigrations(t *testing.T) {
	t.Parallel()
	files, err := sqlsource.Files(repoDir(t, "sql"))
	if err != nil {
		t.Fatal(err)
	}
	tdb := testdb.New(t)
	before, changes, err := sqlsource.Check(t.Context(), tdb.Pool, files)
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) > 0 {
		t.Fatalf("sql/ and migrations/ differ; change functions in their sql/ file, then run "+
			"make migration name=..., make schema, make generate:\n%s", sqlsource.Report(changes))
	}
	if len(before) < 50 {
		t.Fatalf("the migrations define %d functions, triggers and views; expected pullwake's", len(before))
	}
	// `grep -rl 'FUNCTION name(' sql/` finds exactly one file for every
	// function (sql/schema.sql spells it FUNCTION public.name().
	all, err := filepath.Glob(filepath.Join(repoDir(t, "sql"), "*.sql"))
	if err != nil {
		t.Fatal(err)
	}
	text := map[string]string{}
	for _, f := range all {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text[filepath.Base(f)] = string(b)
	}
	for _, o := range before {
		if o.Kind != sqlsource.Function {
			continue
		}
		name := o.ID[:strings.IndexByte(o.ID, '(')]
		var in []string
		for f, s := range text {
			if strings.Contains(s, "FUNCTION "+name+"(") {
				in = append(in, f)
			}
		}
		if len(in) != 1 {
			t.Errorf("FUNCTION %s( is in %v, want exactly one file", name, in)
		}
	}
}

// copyDir copies the *.sql files of src into a new temporary directory.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	names, err := filepath.Glob(filepath.Join(src, "*.sql"))
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, filepath.Base(n)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func writeFile(t *testing.T, dir, name, text string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// A change to one function's file makes a migration of that function only,
// which goose applies and rolls back (Generate proves both).
func TestGenerateOneFunction(t *testing.T) {
	t.Parallel()
	migrations := copyDir(t, repoDir(t, "migrations"))
	sqlDir := copyDir(t, repoDir(t, "sql"))
	path := filepath.Join(sqlDir, "lifecycle.sql")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// A new line in heartbeat_claim's body.
	src := string(b)
	at := strings.Index(src, "FUNCTION heartbeat_claim(")
	body := at + strings.Index(src[at:], "BEGIN\n") + len("BEGIN\n")
	if at < 0 || body < at {
		t.Fatal("heartbeat_claim's body not found in sql/lifecycle.sql")
	}
	writeFile(t, sqlDir, "lifecycle.sql", src[:body]+"    -- probe\n"+src[body:])

	tdb := testdb.Empty(t)
	out, changes, err := sqlsource.Generate(t.Context(), tdb.Pool, migrations, sqlDir, "probe", "test")
	if err != nil {
		t.Fatal(err)
	}
	if len(changes) != 1 || changes[0].Old == nil || changes[0].New == nil ||
		!strings.HasPrefix(changes[0].New.ID, "heartbeat_claim(") {
		t.Fatalf("changes:\n%s\nwant heartbeat_claim changed only", sqlsource.Report(changes))
	}
	latest, _ := filepath.Glob(filepath.Join(migrations, "*.sql"))
	slices.Sort(latest)
	if out != latest[len(latest)-1] || !strings.HasSuffix(out, "_probe.sql") {
		t.Fatalf("wrote %s; the newest migration is %s", out, latest[len(latest)-1])
	}
	mig, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	up, down, _ := strings.Cut(string(mig), "-- +goose Down")
	for part, text := range map[string]string{"Up": up, "Down": down} {
		creates := regexp.MustCompile(`(?m)^CREATE OR REPLACE FUNCTION (\w+)\(`).FindAllStringSubmatch(text, -1)
		if len(creates) != 1 || creates[0][1] != "heartbeat_claim" || strings.Contains(text, "DROP ") {
			t.Fatalf("%s of the generated migration:\n%s\nwant heartbeat_claim only", part, text)
		}
	}
	if !strings.Contains(up, "    -- probe\n") || strings.Contains(down, "-- probe") {
		t.Fatalf("Up must hold the new body, Down the old one:\n%s", mig)
	}

	// The same files again: the new migration made them equal.
	if _, _, err := sqlsource.Generate(t.Context(), testdb.Empty(t).Pool, migrations, sqlDir, "again", "test"); !errors.Is(err, sqlsource.ErrNothingToDo) {
		t.Fatalf("a second generation: %v, want ErrNothingToDo", err)
	}
}

// The changes CREATE OR REPLACE cannot make, on a small schema: a result
// type changes (dropped and made again), a function is new, one is no
// longer defined (dropped), a trigger and a view change. Generate proves
// the migration both ways.
func TestGenerateEveryKindOfChange(t *testing.T) {
	t.Parallel()
	migrations := t.TempDir()
	writeFile(t, migrations, "00001_base.sql", `-- +goose Up
CREATE TABLE t (id int PRIMARY KEY, n int NOT NULL DEFAULT 0);

-- +goose StatementBegin
CREATE FUNCTION f(p int) RETURNS int LANGUAGE sql IMMUTABLE AS $$ SELECT p + 1 $$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE FUNCTION gone() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.n := NEW.n + 1;
    RETURN NEW;
END
$$;
-- +goose StatementEnd
CREATE TRIGGER t_bump BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION bump();
CREATE VIEW v AS SELECT id, n FROM t;

-- +goose Down
DROP VIEW v;
DROP TABLE t;
DROP FUNCTION bump();
DROP FUNCTION gone();
DROP FUNCTION f(int);
`)
	sqlDir := t.TempDir()
	writeFile(t, sqlDir, "schema.sql", "-- Code generated by hand. DO NOT EDIT.\nCREATE TABLE ignored (x int);\n")
	writeFile(t, sqlDir, "a.sql", `-- f answers in text now.
CREATE OR REPLACE FUNCTION f(p int) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT (p + 1)::text $$;

CREATE OR REPLACE FUNCTION g() RETURNS text LANGUAGE sql AS $$ SELECT f(1) $$;

CREATE OR REPLACE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.n := NEW.n + 1;
    RETURN NEW;
END
$$;
CREATE OR REPLACE TRIGGER t_bump BEFORE INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION bump();
`)
	writeFile(t, sqlDir, "b.sql", "CREATE OR REPLACE VIEW v AS SELECT id FROM t;\n")

	tdb := testdb.Empty(t)
	out, changes, err := sqlsource.Generate(t.Context(), tdb.Pool, migrations, sqlDir, "every_kind", "test")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, c := range changes {
		got = append(got, c.What())
	}
	want := []string{
		"function f(integer): changed in " + filepath.ToSlash(filepath.Join(sqlDir, "a.sql")) + " (dropped and made again)",
		"function g(): new in " + filepath.ToSlash(filepath.Join(sqlDir, "a.sql")),
		"trigger t_bump ON t: changed in " + filepath.ToSlash(filepath.Join(sqlDir, "a.sql")),
		"view v: changed in " + filepath.ToSlash(filepath.Join(sqlDir, "b.sql")),
		"function gone(): no sql/ file defines it (dropped)",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("changes:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if filepath.Base(out) != "00002_every_kind.sql" {
		t.Fatalf("wrote %s", out)
	}
}

// sql/ holds functions, triggers and views, each once; a bad statement is
// reported with its file and line.
func TestApplyRefuses(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		files []sqlsource.File
		want  string
	}{
		{"table", []sqlsource.File{{Name: "sql/x.sql", SQL: "CREATE TABLE x (id int);"}},
			"sql/x.sql: CREATE TABLE public.x: sql/ holds only"},
		{"alter", []sqlsource.File{{Name: "sql/x.sql", SQL: "CREATE FUNCTION x() RETURNS int LANGUAGE sql AS 'SELECT 1';\n" +
			"ALTER FUNCTION x() SET work_mem = '1MB';"}},
			"sql/x.sql: ALTER FUNCTION public.x(): sql/ holds only"},
		{"twice", []sqlsource.File{
			{Name: "sql/a.sql", SQL: "CREATE OR REPLACE FUNCTION x() RETURNS int LANGUAGE sql AS 'SELECT 1';"},
			{Name: "sql/b.sql", SQL: "CREATE OR REPLACE FUNCTION x() RETURNS int LANGUAGE sql AS 'SELECT 2';"}},
			"function x() is defined twice, in sql/a.sql and in sql/b.sql"},
		{"syntax", []sqlsource.File{{Name: "sql/a.sql", SQL: "-- one\n-- two\nCREATE OR REPLACE FUNCTON x() RETURNS int;"}},
			"sql/a.sql:3: syntax error"},
		{"schema", []sqlsource.File{{Name: "sql/a.sql", SQL: "CREATE SCHEMA s; CREATE FUNCTION s.x() RETURNS int LANGUAGE sql AS 'SELECT 1';"}},
			"sql/a.sql: CREATE SCHEMA s: sql/ holds only"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, _, err := sqlsource.Check(t.Context(), testdb.Empty(t).Pool, tc.files)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// sqlc reads its schema from sql/: the tables from sql/schema.sql first,
// then every source file, whose functions replace schema.sql's copies.
func TestSQLCReadsSQLSource(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join(repoDir(t, "."), "sqlc.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	_, list, ok := strings.Cut(string(b), "\n    schema:\n")
	if !ok {
		t.Fatal("sqlc.yaml: no schema: list")
	}
	var got []string
	for _, l := range strings.Split(list, "\n") {
		item, ok := strings.CutPrefix(strings.TrimSpace(l), "- ")
		if !ok {
			break
		}
		got = append(got, item)
	}
	files, err := sqlsource.Files(repoDir(t, "sql"))
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"sql/schema.sql"}
	for _, f := range files {
		want = append(want, "sql/"+filepath.Base(f.Name))
	}
	if !slices.Equal(got, want) {
		t.Fatalf("sqlc.yaml schema lists %v, want %v", got, want)
	}
}

// docs/lifecycle.md maps each rule to its function: every function its
// tables name is defined in sql/, and every sql/ file it names exists.
func TestLifecycleDocNamesFunctions(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile(filepath.Join(repoDir(t, "docs"), "lifecycle.md"))
	if err != nil {
		t.Fatal(err)
	}
	files, err := sqlsource.Files(repoDir(t, "sql"))
	if err != nil {
		t.Fatal(err)
	}
	var src strings.Builder
	for _, f := range files {
		src.WriteString(f.SQL)
	}
	// The function column of the rules table and of the wake-events table.
	cells := map[string]int{"## Rules": 2, "## Wake events": 3}
	col, named := 0, 0
	for _, line := range strings.Split(string(doc), "\n") {
		if strings.HasPrefix(line, "## ") {
			col = cells[line]
			continue
		}
		parts := strings.Split(line, "|")
		if col == 0 || !strings.HasPrefix(line, "| ") || len(parts) <= col || strings.HasPrefix(parts[1], "---") {
			continue
		}
		for _, m := range regexp.MustCompile("`([^`]+)`").FindAllStringSubmatch(parts[col], -1) {
			name := m[1]
			switch {
			case strings.HasPrefix(name, "sql/"):
				if _, err := os.Stat(filepath.Join(repoDir(t, "."), name)); err != nil {
					t.Errorf("docs/lifecycle.md names %s: %v", name, err)
				}
			case regexp.MustCompile(`^[a-z][a-z0-9]*_[a-z0-9_]+$`).MatchString(name):
				named++
				if !strings.Contains(src.String(), "FUNCTION "+name+"(") {
					t.Errorf("docs/lifecycle.md names function %s, which no sql/ file defines", name)
				}
			}
		}
	}
	if named < 20 {
		t.Fatalf("found %d function names in docs/lifecycle.md's tables; has the page changed shape?", named)
	}
}
