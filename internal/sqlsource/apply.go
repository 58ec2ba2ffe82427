package sqlsource

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Applied is what the source files define, as the database reads it after
// running them.
type Applied struct {
	// Objects are the functions, triggers and views the files define, in
	// the order the files define them, each with its File.
	Objects []Object
	// Recreated holds the IDs of the functions whose new definition
	// CREATE OR REPLACE cannot install over the old one (another result
	// type, renamed parameters, a removed default): Apply dropped each
	// first, and a migration must do the same.
	Recreated map[string]bool
}

// The recorder: an event trigger that notes every object a DDL command
// creates or replaces, with the file that ran it (a setting of the
// transaction). Apply removes it before it returns.
const (
	recorderSQL = `
CREATE SCHEMA pw_sqlsource;
CREATE TABLE pw_sqlsource.defined (
    seq     bigint GENERATED ALWAYS AS IDENTITY,
    file    text,
    classid oid,
    objid   oid,
    tag     text,
    name    text
);
CREATE FUNCTION pw_sqlsource.record() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pw_sqlsource.defined (file, classid, objid, tag, name)
    SELECT current_setting('pw_sqlsource.file', true), c.classid, c.objid, c.command_tag, c.object_identity
      FROM pg_event_trigger_ddl_commands() c;
END
$$;
CREATE EVENT TRIGGER pw_sqlsource_record ON ddl_command_end EXECUTE FUNCTION pw_sqlsource.record();
`
	freshSQL = `
SELECT coalesce(array_agg(d ORDER BY o), '{}') FROM (
    SELECT 1 AS o, 'DROP TRIGGER ' || quote_ident(t.tgname) || ' ON ' || t.tgrelid::regclass::text AS d
      FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
     WHERE NOT t.tgisinternal AND t.tgconstraint <> 0 AND c.relnamespace = 'public'::regnamespace
    UNION ALL
    SELECT 2, 'DROP VIEW ' || string_agg(c.oid::regclass::text, ', ')
      FROM pg_class c
     WHERE c.relkind = 'v' AND c.relnamespace = 'public'::regnamespace
    HAVING count(*) > 0) x`
	unrecordSQL = `DROP EVENT TRIGGER pw_sqlsource_record; DROP SCHEMA pw_sqlsource CASCADE`
	definedSQL  = `
SELECT d.file, d.classid::regclass::text, d.objid, d.tag, coalesce(d.name, '')
  FROM pw_sqlsource.defined d ORDER BY d.seq`
)

// The statements sql/ may hold, by the command tag PostgreSQL reports, and
// the kind of object each defines.
var allowedTags = map[string]Kind{
	"CREATE FUNCTION":  Function,
	"CREATE PROCEDURE": Function,
	"CREATE TRIGGER":   Trigger,
	"CREATE VIEW":      View,
}

// Apply runs files, in order, in tx (which it leaves open: the caller
// decides whether it commits, which Check and Generate never do) and
// returns what they define. Every view and constraint trigger of schema
// public is dropped first and made again by the files, since CREATE OR
// REPLACE VIEW cannot remove or rename a column and a constraint trigger
// cannot be replaced at all (its file says CREATE CONSTRAINT TRIGGER); a
// function that CREATE OR REPLACE cannot change is dropped first
// (Applied.Recreated). It sets the transaction's search_path to public, as
// every definition here is read under it.
func Apply(ctx context.Context, tx pgx.Tx, files []File) (*Applied, error) {
	if _, err := tx.Exec(ctx, `SET LOCAL search_path TO public`); err != nil {
		return nil, fmt.Errorf("set search_path: %w", err)
	}
	// What CREATE OR REPLACE cannot replace is made afresh by the files:
	// views (a column may go) and constraint triggers.
	var drops []string
	if err := tx.QueryRow(ctx, freshSQL).Scan(&drops); err != nil {
		return nil, fmt.Errorf("list views and constraint triggers: %w", err)
	}
	for _, d := range drops {
		if _, err := tx.Exec(ctx, d); err != nil {
			return nil, fmt.Errorf("%s before applying sql/: %w", d, err)
		}
	}
	if _, err := tx.Exec(ctx, recorderSQL); err != nil {
		return nil, fmt.Errorf("create the recorder (an event trigger: the user must be a superuser): %w", err)
	}
	recreated := map[string]bool{}
	for {
		if _, err := tx.Exec(ctx, `SAVEPOINT pw_sqlsource_apply`); err != nil {
			return nil, err
		}
		err := applyFiles(ctx, tx, files)
		if err == nil {
			break
		}
		drop, id, ok := dropFirst(err)
		if !ok || recreated[id] {
			return nil, err
		}
		// The definition changes what CREATE OR REPLACE may not change:
		// drop the old function and run the files again.
		if _, err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT pw_sqlsource_apply`); err != nil {
			return nil, err
		}
		if _, err2 := tx.Exec(ctx, drop+" "+id); err2 != nil {
			return nil, fmt.Errorf("%w\n(and %s %s, to make it afresh, failed: %v)", err, drop, id, err2)
		}
		recreated[id] = true
	}
	objs, err := defined(ctx, tx)
	if err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, unrecordSQL); err != nil {
		return nil, fmt.Errorf("drop the recorder: %w", err)
	}
	return &Applied{Objects: objs, Recreated: recreated}, nil
}

func applyFiles(ctx context.Context, tx pgx.Tx, files []File) error {
	for _, f := range files {
		if _, err := tx.Exec(ctx, `SELECT set_config('pw_sqlsource.file', $1, true)`, f.Name); err != nil {
			return err
		}
		// No arguments: the simple protocol, which runs every statement
		// of the file in order.
		if _, err := tx.Exec(ctx, f.SQL); err != nil {
			return fileError(f, err)
		}
	}
	return nil
}

// FileError is an error of one source file: where it happened (the line,
// when PostgreSQL gives a position) and the database's error, which it
// wraps.
type FileError struct {
	File string
	Line int // 0 when unknown
	Err  error
}

func (e *FileError) Error() string {
	where := e.File
	if e.Line > 0 {
		where = fmt.Sprintf("%s:%d", e.File, e.Line)
	}
	var pe *pgconn.PgError
	if !errors.As(e.Err, &pe) {
		return where + ": " + e.Err.Error()
	}
	msg := fmt.Sprintf("%s: %s (SQLSTATE %s)", where, pe.Message, pe.Code)
	for _, s := range []string{pe.Detail, pe.Hint, pe.Where} {
		if s != "" {
			msg += "\n\t" + s
		}
	}
	return msg
}

func (e *FileError) Unwrap() error { return e.Err }

func fileError(f File, err error) error {
	fe := &FileError{File: f.Name, Err: err}
	var pe *pgconn.PgError
	if errors.As(err, &pe) && pe.Position > 0 {
		runes := []rune(f.SQL)
		p := min(int(pe.Position), len(runes))
		fe.Line = 1 + strings.Count(string(runes[:p]), "\n")
	}
	return fe
}

// dropHint is PostgreSQL's hint when CREATE OR REPLACE cannot change a
// function (SQLSTATE 42P13): "Use DROP FUNCTION f(integer) first."
var dropHint = regexp.MustCompile(`^Use (DROP (?:FUNCTION|PROCEDURE)) (.+) first\.$`)

// dropFirst reports whether err asks for a function to be dropped first,
// with the DROP command and the function's ID.
func dropFirst(err error) (drop, id string, ok bool) {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "42P13" {
		return "", "", false
	}
	m := dropHint.FindStringSubmatch(pe.Hint)
	if m == nil {
		return "", "", false
	}
	return m[1], m[2], true
}

// defined reads the recorder: every object the files created or replaced,
// refusing what sql/ must not hold and anything defined twice.
func defined(ctx context.Context, tx pgx.Tx) ([]Object, error) {
	type rec struct {
		file, class string
		oid         uint32
		tag, name   string
	}
	rows, err := tx.Query(ctx, definedSQL)
	if err != nil {
		return nil, fmt.Errorf("read the recorder: %w", err)
	}
	recs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (rec, error) {
		var x rec
		err := r.Scan(&x.file, &x.class, &x.oid, &x.tag, &x.name)
		return x, err
	})
	if err != nil {
		return nil, fmt.Errorf("read the recorder: %w", err)
	}
	oids := map[Kind][]uint32{}
	for _, r := range recs {
		k, ok := allowedTags[r.tag]
		if !ok {
			return nil, fmt.Errorf("%s: %s %s: sql/ holds only CREATE OR REPLACE FUNCTION, TRIGGER and VIEW; "+
				"tables, indexes and every other change belong in a migration (fold an ALTER FUNCTION ... SET into the CREATE)",
				r.file, r.tag, r.name)
		}
		oids[k] = append(oids[k], r.oid)
	}
	objs, err := readObjects(ctx, tx, oids)
	if err != nil {
		return nil, err
	}
	byOID := map[string]Object{}
	for _, o := range objs {
		byOID[fmt.Sprint(o.Kind, o.oid)] = o
	}
	var out []Object
	seen := map[string]string{}
	for _, r := range recs {
		k := allowedTags[r.tag]
		o, ok := byOID[fmt.Sprint(k, r.oid)]
		if !ok {
			return nil, fmt.Errorf("%s: %s %s: sql/ defines objects of schema public only", r.file, r.tag, r.name)
		}
		if prev, dup := seen[o.Key()]; dup {
			return nil, fmt.Errorf("%s %s is defined twice, in %s and in %s: give it one home", o.Kind, o.ID, prev, r.file)
		}
		seen[o.Key()] = r.file
		o.File = r.file
		out = append(out, o)
	}
	return out, nil
}
