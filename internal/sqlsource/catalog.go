package sqlsource

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
)

// Kind is the kind of a schema object whose source is in sql/.
type Kind string

// The kinds of object sql/ holds. Their order here is the order a migration
// creates them in: a trigger names its function, a view may call one.
const (
	Function Kind = "function"
	View     Kind = "view"
	Trigger  Kind = "trigger"
)

func (k Kind) rank() int {
	switch k {
	case Function:
		return 0
	case View:
		return 1
	default:
		return 2
	}
}

// Object is one function, trigger or view as the database defines it.
type Object struct {
	Kind Kind
	// ID names the object as DROP does: a function by name and argument
	// types (claim_next_wake(text,integer,timestamp with time zone,text)),
	// a trigger as "name ON table", a view by name.
	ID string
	// Def is the database's own text of its definition: pg_get_functiondef,
	// pg_get_triggerdef, or CREATE OR REPLACE VIEW over pg_get_viewdef.
	// Two objects are the same when their Defs are equal.
	Def string
	// File is the sql/ file that defines it (set by Apply only).
	File string

	oid int64 // orders objects of one kind as the database created them
}

// Key identifies an object across databases: its kind and ID.
func (o Object) Key() string { return string(o.Kind) + " " + o.ID }

// Catalog is every function, trigger and view of schema public, by Key.
type Catalog map[string]Object

// sorted lists the catalog's objects by kind, then in creation order.
func (c Catalog) sorted() []Object {
	out := make([]Object, 0, len(c))
	for _, o := range c {
		out = append(out, o)
	}
	slices.SortFunc(out, func(a, b Object) int {
		return cmp.Or(cmp.Compare(a.Kind.rank(), b.Kind.rank()), cmp.Compare(a.oid, b.oid))
	})
	return out
}

// querier is what ReadCatalog needs: a pgx.Tx, *pgx.Conn or *pgxpool.Pool.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// The statements that read each kind's objects: oid, ID, Def. Functions
// that belong to an extension are not ours; aggregates and window
// functions have no pg_get_functiondef (pullwake has none).
const (
	functionsSQL = `
SELECT p.oid::bigint, p.oid::regprocedure::text, pg_get_functiondef(p.oid)
  FROM pg_proc p
 WHERE p.pronamespace = 'public'::regnamespace AND p.prokind IN ('f', 'p')
   AND NOT EXISTS (SELECT 1 FROM pg_depend d
                    WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')
   AND ($1::oid[] IS NULL OR p.oid = ANY ($1))`
	triggersSQL = `
SELECT t.oid::bigint, quote_ident(t.tgname) || ' ON ' || t.tgrelid::regclass::text, pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
 WHERE NOT t.tgisinternal AND c.relnamespace = 'public'::regnamespace
   AND ($1::oid[] IS NULL OR t.oid = ANY ($1))`
	viewsSQL = `
SELECT c.oid::bigint, c.oid::regclass::text,
       'CREATE OR REPLACE VIEW ' || c.oid::regclass::text
       || coalesce(' WITH (' || array_to_string(c.reloptions, ', ') || ')', '')
       || E' AS\n' || rtrim(pg_get_viewdef(c.oid), E'; \n')
  FROM pg_class c
 WHERE c.relkind = 'v' AND c.relnamespace = 'public'::regnamespace
   AND ($1::oid[] IS NULL OR c.oid = ANY ($1))`
)

var kindSQL = []struct {
	kind Kind
	sql  string
}{{Function, functionsSQL}, {View, viewsSQL}, {Trigger, triggersSQL}}

// ReadCatalog reads every function, trigger and view of schema public.
// The definitions name types as the session's search_path shows them;
// Check and Generate pin it to public.
func ReadCatalog(ctx context.Context, q querier) (Catalog, error) {
	objs, err := readObjects(ctx, q, nil)
	if err != nil {
		return nil, err
	}
	c := make(Catalog, len(objs))
	for _, o := range objs {
		c[o.Key()] = o
	}
	return c, nil
}

// readObjects reads the objects of every kind, only those whose oids are
// listed when oids is not nil.
func readObjects(ctx context.Context, q querier, oids map[Kind][]uint32) ([]Object, error) {
	var out []Object
	for _, k := range kindSQL {
		var filter []uint32
		if oids != nil {
			filter = oids[k.kind]
			if len(filter) == 0 {
				continue
			}
		}
		rows, err := q.Query(ctx, k.sql, filter)
		if err != nil {
			return nil, fmt.Errorf("read %ss: %w", k.kind, err)
		}
		objs, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Object, error) {
			o := Object{Kind: k.kind}
			err := r.Scan(&o.oid, &o.ID, &o.Def)
			return o, err
		})
		if err != nil {
			return nil, fmt.Errorf("read %ss: %w", k.kind, err)
		}
		out = append(out, objs...)
	}
	return out, nil
}
