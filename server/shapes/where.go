package shapes

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// A where clause is parsed once into a small tree and evaluated in Go on
// every row the shape considers, with SQL's three-valued logic. It is a
// subset of SQL on purpose: comparisons of one column with literals or
// $n parameters, IN lists, IS [NOT] NULL, AND, OR, NOT and parentheses.
// Everything else is refused with a message saying what.

type tri int8

const (
	triFalse tri = iota
	triTrue
	triUnknown
)

func (t tri) not() tri {
	switch t {
	case triTrue:
		return triFalse
	case triFalse:
		return triTrue
	}
	return triUnknown
}

type expr interface {
	eval(r Row) tri
}

type andExpr struct{ l, r expr }
type orExpr struct{ l, r expr }
type notExpr struct{ e expr }

func (e andExpr) eval(r Row) tri {
	a, b := e.l.eval(r), e.r.eval(r)
	switch {
	case a == triFalse || b == triFalse:
		return triFalse
	case a == triTrue && b == triTrue:
		return triTrue
	}
	return triUnknown
}

func (e orExpr) eval(r Row) tri {
	a, b := e.l.eval(r), e.r.eval(r)
	switch {
	case a == triTrue || b == triTrue:
		return triTrue
	case a == triFalse && b == triFalse:
		return triFalse
	}
	return triUnknown
}

func (e notExpr) eval(r Row) tri { return e.e.eval(r).not() }

// value is a typed literal or column value: text, an integer or an instant.
type value struct {
	null bool
	s    string
	i    int64
	t    time.Time
}

type cmpExpr struct {
	col  int
	typ  string
	op   string
	lit  value
	list []value // IN
	not  bool    // NOT IN
}

func (e cmpExpr) eval(r Row) tri {
	v := r[e.col]
	if v == nil || (e.list == nil && e.lit.null) {
		return triUnknown
	}
	cv, err := typed(e.typ, *v)
	if err != nil {
		return triUnknown
	}
	if e.list != nil {
		res, sawNull := triFalse, false
		for _, l := range e.list {
			if l.null {
				sawNull = true
				continue
			}
			if compare(e.typ, cv, l) == 0 {
				res = triTrue
				break
			}
		}
		if res == triFalse && sawNull {
			res = triUnknown
		}
		if e.not {
			return res.not()
		}
		return res
	}
	c := compare(e.typ, cv, e.lit)
	var ok bool
	switch e.op {
	case "=":
		ok = c == 0
	case "<>":
		ok = c != 0
	case "<":
		ok = c < 0
	case "<=":
		ok = c <= 0
	case ">":
		ok = c > 0
	case ">=":
		ok = c >= 0
	}
	if ok {
		return triTrue
	}
	return triFalse
}

type nullExpr struct {
	col int
	not bool
}

func (e nullExpr) eval(r Row) tri {
	if (r[e.col] == nil) != e.not {
		return triTrue
	}
	return triFalse
}

func compare(typ string, a, b value) int {
	switch typ {
	case "int2", "int4", "int8":
		switch {
		case a.i < b.i:
			return -1
		case a.i > b.i:
			return 1
		}
		return 0
	case "timestamptz":
		return a.t.Compare(b.t)
	}
	return strings.Compare(a.s, b.s)
}

// typed reads s (text) as a value of the column type typ.
func typed(typ, s string) (value, error) {
	switch typ {
	case "int2", "int4", "int8":
		n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
		if err != nil {
			return value{}, fmt.Errorf("%q is not an integer", s)
		}
		return value{i: n}, nil
	case "timestamptz":
		for _, layout := range []string{"2006-01-02 15:04:05.999999-07", "2006-01-02 15:04:05.999999-07:00", time.RFC3339Nano, "2006-01-02T15:04:05.999999", "2006-01-02 15:04:05.999999", "2006-01-02"} {
			if t, err := time.Parse(layout, s); err == nil {
				return value{t: t}, nil
			}
		}
		return value{}, fmt.Errorf("%q is not a timestamp (write it as 2006-01-02 15:04:05+00 or RFC 3339)", s)
	case "bool":
		switch strings.ToLower(strings.TrimSpace(s)) {
		case "t", "true", "yes", "on", "1":
			return value{s: "true"}, nil
		case "f", "false", "no", "off", "0":
			return value{s: "false"}, nil
		}
		return value{}, fmt.Errorf("%q is not a boolean", s)
	}
	return value{s: s}, nil
}

// ---- parsing ----

type tokKind int

const (
	tEOF tokKind = iota
	tIdent
	tQIdent
	tString
	tNumber
	tParam
	tOp
	tLParen
	tRParen
	tComma
)

type token struct {
	kind tokKind
	text string
	pos  int
}

func lex(s string) ([]token, error) {
	var out []token
	i := 0
	for i < len(s) {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '(':
			out = append(out, token{tLParen, "(", i})
			i++
		case c == ')':
			out = append(out, token{tRParen, ")", i})
			i++
		case c == ',':
			out = append(out, token{tComma, ",", i})
			i++
		case c == '\'':
			var b strings.Builder
			j := i + 1
			for {
				if j >= len(s) {
					return nil, fmt.Errorf("unterminated string literal at position %d", i+1)
				}
				if s[j] == '\'' {
					if j+1 < len(s) && s[j+1] == '\'' {
						b.WriteByte('\'')
						j += 2
						continue
					}
					break
				}
				b.WriteByte(s[j])
				j++
			}
			out = append(out, token{tString, b.String(), i})
			i = j + 1
		case c == '"':
			var b strings.Builder
			j := i + 1
			for {
				if j >= len(s) {
					return nil, fmt.Errorf("unterminated quoted identifier at position %d", i+1)
				}
				if s[j] == '"' {
					if j+1 < len(s) && s[j+1] == '"' {
						b.WriteByte('"')
						j += 2
						continue
					}
					break
				}
				b.WriteByte(s[j])
				j++
			}
			out = append(out, token{tQIdent, b.String(), i})
			i = j + 1
		case c == '$':
			j := i + 1
			for j < len(s) && s[j] >= '0' && s[j] <= '9' {
				j++
			}
			if j == i+1 {
				return nil, fmt.Errorf("a $ at position %d must be followed by a parameter number", i+1)
			}
			out = append(out, token{tParam, s[i+1 : j], i})
			i = j
		case c >= '0' && c <= '9' || (c == '-' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9'):
			j := i + 1
			for j < len(s) && (s[j] >= '0' && s[j] <= '9' || s[j] == '.') {
				j++
			}
			out = append(out, token{tNumber, s[i:j], i})
			i = j
		case c == '=':
			out = append(out, token{tOp, "=", i})
			i++
		case c == '<' || c == '>' || c == '!':
			if i+1 < len(s) && (s[i+1] == '=' || (c == '<' && s[i+1] == '>')) {
				op := s[i : i+2]
				if op == "!=" {
					op = "<>"
				}
				out = append(out, token{tOp, op, i})
				i += 2
				continue
			}
			if c == '!' {
				return nil, fmt.Errorf("unexpected %q at position %d", c, i+1)
			}
			out = append(out, token{tOp, string(c), i})
			i++
		case c == '_' || unicode.IsLetter(rune(c)):
			j := i + 1
			for j < len(s) && (s[j] == '_' || s[j] == '$' || s[j] >= '0' && s[j] <= '9' || unicode.IsLetter(rune(s[j]))) {
				j++
			}
			out = append(out, token{tIdent, s[i:j], i})
			i = j
		default:
			return nil, fmt.Errorf("unsupported %q at position %d", c, i+1)
		}
	}
	return append(out, token{tEOF, "", len(s)}), nil
}

type parser struct {
	toks   []token
	i      int
	t      *table
	params map[string]string
	used   map[string]bool
}

func (p *parser) peek() token { return p.toks[p.i] }
func (p *parser) next() token { t := p.toks[p.i]; p.i++; return t }

func (p *parser) keyword(k string) bool {
	t := p.peek()
	if t.kind == tIdent && strings.EqualFold(t.text, k) {
		p.i++
		return true
	}
	return false
}

// parseWhere parses s against t's columns, binding $n from params.
func parseWhere(s string, t *table, params map[string]string) (expr, error) {
	toks, err := lex(s)
	if err != nil {
		return nil, err
	}
	p := &parser{toks: toks, t: t, params: params, used: map[string]bool{}}
	e, err := p.or()
	if err != nil {
		return nil, err
	}
	if tk := p.peek(); tk.kind != tEOF {
		return nil, fmt.Errorf("unexpected %q at position %d", tk.text, tk.pos+1)
	}
	return e, nil
}

func (p *parser) or() (expr, error) {
	l, err := p.and()
	if err != nil {
		return nil, err
	}
	for p.keyword("OR") {
		r, err := p.and()
		if err != nil {
			return nil, err
		}
		l = orExpr{l, r}
	}
	return l, nil
}

func (p *parser) and() (expr, error) {
	l, err := p.not()
	if err != nil {
		return nil, err
	}
	for p.keyword("AND") {
		r, err := p.not()
		if err != nil {
			return nil, err
		}
		l = andExpr{l, r}
	}
	return l, nil
}

func (p *parser) not() (expr, error) {
	if p.keyword("NOT") {
		e, err := p.not()
		if err != nil {
			return nil, err
		}
		return notExpr{e}, nil
	}
	return p.primary()
}

var reserved = map[string]bool{"and": true, "or": true, "not": true, "in": true, "is": true, "null": true, "true": true, "false": true}

func (p *parser) primary() (expr, error) {
	tk := p.peek()
	if tk.kind == tLParen {
		p.next()
		e, err := p.or()
		if err != nil {
			return nil, err
		}
		if c := p.next(); c.kind != tRParen {
			return nil, fmt.Errorf("expected ) at position %d", c.pos+1)
		}
		return e, nil
	}
	if tk.kind != tIdent && tk.kind != tQIdent {
		return nil, fmt.Errorf("expected a column name at position %d, found %q (a condition is column op value)", tk.pos+1, tk.text)
	}
	if tk.kind == tIdent && reserved[strings.ToLower(tk.text)] {
		return nil, fmt.Errorf("expected a column name at position %d, found %q", tk.pos+1, tk.text)
	}
	p.next()
	name := tk.text
	if tk.kind == tIdent {
		name = strings.ToLower(name)
	}
	if n := p.peek(); n.kind == tLParen {
		return nil, fmt.Errorf("functions are not supported (%s( at position %d)", tk.text, tk.pos+1)
	}
	col := p.t.col(name)
	if col < 0 {
		return nil, fmt.Errorf("unknown column %q of table %s", name, p.t.Name)
	}
	typ := p.t.Columns[col].Type
	if typ == "jsonb" {
		return nil, fmt.Errorf("column %q is jsonb: only scalar columns can be filtered", name)
	}
	switch {
	case p.keyword("IS"):
		not := p.keyword("NOT")
		if !p.keyword("NULL") {
			return nil, fmt.Errorf("expected NULL after IS at position %d", p.peek().pos+1)
		}
		return nullExpr{col: col, not: not}, nil
	case p.keyword("NOT"):
		if !p.keyword("IN") {
			return nil, fmt.Errorf("expected IN after NOT at position %d", p.peek().pos+1)
		}
		return p.inList(col, typ, true)
	case p.keyword("IN"):
		return p.inList(col, typ, false)
	}
	op := p.next()
	if op.kind != tOp {
		return nil, fmt.Errorf("expected an operator (=, <>, !=, <, <=, >, >=, IN, IS) after %q at position %d, found %q", name, op.pos+1, op.text)
	}
	if op.text != "=" && op.text != "<>" && typ != "int2" && typ != "int4" && typ != "int8" && typ != "timestamptz" {
		return nil, fmt.Errorf("%s on column %q (%s): ordering comparisons are supported on integer and timestamp columns only", op.text, name, typ)
	}
	lit, err := p.literal(typ, name)
	if err != nil {
		return nil, err
	}
	if t := p.peek(); t.kind == tOp || (t.kind == tIdent && strings.HasPrefix(strings.ToLower(t.text), "::")) {
		return nil, fmt.Errorf("unexpected %q at position %d", t.text, t.pos+1)
	}
	return cmpExpr{col: col, typ: typ, op: op.text, lit: lit}, nil
}

func (p *parser) inList(col int, typ string, not bool) (expr, error) {
	if t := p.next(); t.kind != tLParen {
		return nil, fmt.Errorf("expected ( after IN at position %d", t.pos+1)
	}
	var list []value
	for {
		v, err := p.literal(typ, p.t.Columns[col].Name)
		if err != nil {
			return nil, err
		}
		list = append(list, v)
		t := p.next()
		if t.kind == tRParen {
			break
		}
		if t.kind != tComma {
			return nil, fmt.Errorf("expected , or ) in the IN list at position %d", t.pos+1)
		}
	}
	return cmpExpr{col: col, typ: typ, list: list, not: not}, nil
}

// literal reads a value for a column of type typ.
func (p *parser) literal(typ, colName string) (value, error) {
	t := p.next()
	var text string
	switch t.kind {
	case tString:
		text = t.text
	case tParam:
		v, ok := p.params[t.text]
		if !ok {
			return value{}, fmt.Errorf("$%s has no value: send it as params[%s]", t.text, t.text)
		}
		p.used[t.text] = true
		text = v
	case tNumber:
		if typ != "int2" && typ != "int4" && typ != "int8" {
			return value{}, fmt.Errorf("column %q is %s: compare it with a quoted string, not the number %s", colName, typ, t.text)
		}
		text = t.text
	case tIdent:
		switch strings.ToLower(t.text) {
		case "null":
			return value{null: true}, nil
		case "true", "false":
			if typ != "bool" {
				return value{}, fmt.Errorf("column %q is %s, not boolean", colName, typ)
			}
			text = t.text
		default:
			return value{}, fmt.Errorf("expected a value at position %d, found %q (column-to-column comparisons are not supported)", t.pos+1, t.text)
		}
	case tQIdent:
		return value{}, fmt.Errorf("expected a value at position %d, found the identifier \"%s\" (strings take single quotes)", t.pos+1, t.text)
	default:
		return value{}, fmt.Errorf("expected a value at position %d, found %q", t.pos+1, t.text)
	}
	v, err := typed(typ, text)
	if err != nil {
		return value{}, fmt.Errorf("column %q: %v", colName, err)
	}
	return v, nil
}
