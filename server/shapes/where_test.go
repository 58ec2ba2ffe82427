package shapes

import (
	"strings"
	"testing"
)

// The where subset evaluates with SQL's three-valued logic: a comparison
// with NULL is unknown, NOT unknown is unknown, and only a true condition
// keeps a row.
func TestWhereThreeValuedLogic(t *testing.T) {
	t.Parallel()
	tb := tables["entities"]
	row := make(Row, len(tb.Columns))
	row[tb.col("url")] = str("/chat/1")
	row[tb.col("status")] = str("idle")
	row[tb.col("created_at")] = str("1000")
	// parent is NULL
	for _, c := range []struct {
		where string
		want  tri
	}{
		{`parent = 'x'`, triUnknown},
		{`NOT (parent = 'x')`, triUnknown},
		{`parent = 'x' OR status = 'idle'`, triTrue},
		{`parent = 'x' AND status = 'idle'`, triUnknown},
		{`parent = 'x' AND status = 'busy'`, triFalse},
		{`parent IS NULL`, triTrue},
		{`parent IS NOT NULL`, triFalse},
		{`status IN ('a', NULL)`, triUnknown},
		{`status IN ('idle', NULL)`, triTrue},
		{`status NOT IN ('a', NULL)`, triUnknown},
		{`status = NULL`, triUnknown},
		{`created_at >= 1000 AND created_at < '1001' AND created_at <> 7`, triTrue},
		{`created_at = $1`, triTrue},
		{`"url" = 'x' OR url = '/chat/1'`, triTrue},
		{`STATUS = 'idle'`, triTrue},
		{`status = 'it''s'`, triFalse},
	} {
		e, err := parseWhere(c.where, tb, map[string]string{"1": "1000"})
		if err != nil {
			t.Fatalf("%s: %v", c.where, err)
		}
		if got := e.eval(row); got != c.want {
			t.Errorf("%s: %v, want %v", c.where, got, c.want)
		}
	}
}

func TestWhereRefusals(t *testing.T) {
	t.Parallel()
	tb := tables["entities"]
	for _, c := range []struct{ where, says string }{
		{`lower(url) = 'x'`, "functions are not supported"},
		{`url = status`, "column-to-column"},
		{`tags = '{}'`, "jsonb"},
		{`1 = 1`, "expected a column name"},
		{`url = $3`, "$3 has no value"},
		{`url = 'a'; DROP TABLE entities`, "unsupported ';'"},
		{`url = 'a' -- c`, "unsupported"},
		{`url = 'a'::text`, "unsupported ':'"},
		{`nope = 1`, `unknown column "nope"`},
		{`url < 'b'`, "ordering comparisons"},
		{`url = 'open`, "unterminated string"},
		{`created_at = 'soon'`, "not an integer"},
		{`url =`, "expected a value"},
		{`(url = 'a'`, "expected )"},
		{`url = 'a' url = 'b'`, "unexpected"},
		{`url = "a"`, "single quotes"},
		{`status = 5`, "quoted string"},
	} {
		_, err := parseWhere(c.where, tb, nil)
		if err == nil || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: %v, want an error saying %q", c.where, err, c.says)
		}
	}
}
