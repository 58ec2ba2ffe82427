package shapes

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// The wire form of a shape's messages: {"key", "value", "headers"}, the
// key "public"."<table>"/"<pk value>" with / in values doubled, values as
// text (null for NULL).

func (d *shapeDef) matches(r Row) bool {
	return r != nil && (d.where == nil || d.where.eval(r) == triTrue)
}

func jsonStr(b *bytes.Buffer, s string) {
	enc, _ := json.Marshal(s)
	b.Write(enc)
}

func (d *shapeDef) rowKey(r Row) string {
	var b strings.Builder
	b.WriteString(`"public"."` + d.t.Name + `"`)
	for _, i := range d.t.PK {
		b.WriteString(`/"` + strings.ReplaceAll(deref(r[i]), "/", "//") + `"`)
	}
	return b.String()
}

// values writes r's columns among cols as a JSON object.
func writeValues(b *bytes.Buffer, t *table, r Row, cols []int) {
	b.WriteByte('{')
	for n, c := range cols {
		if n > 0 {
			b.WriteByte(',')
		}
		jsonStr(b, t.Columns[c].Name)
		b.WriteByte(':')
		if r[c] == nil {
			b.WriteString("null")
		} else {
			jsonStr(b, *r[c])
		}
	}
	b.WriteByte('}')
}

type msgHeaders struct {
	op  string
	lsn uint64
	pos int
	xid uint32

	live bool // from the log (lsn, op_position, txids) rather than a snapshot
}

func (d *shapeDef) message(op string, r Row, cols []int, old Row, oldCols []int, h msgHeaders) []byte {
	var b bytes.Buffer
	b.WriteString(`{"key":`)
	jsonStr(&b, d.rowKey(r))
	b.WriteString(`,"value":`)
	writeValues(&b, d.t, r, cols)
	if old != nil {
		b.WriteString(`,"old_value":`)
		writeValues(&b, d.t, old, oldCols)
	}
	b.WriteString(`,"headers":{"operation":"` + op + `","relation":["public","` + d.t.Name + `"]`)
	if h.live {
		b.WriteString(`,"lsn":"` + strconv.FormatUint(h.lsn, 10) + `","op_position":` + strconv.Itoa(h.pos) +
			`,"txids":[` + strconv.FormatUint(uint64(h.xid), 10) + `]`)
	}
	b.WriteString("}}")
	return b.Bytes()
}

// insert is the message of a row entering the shape.
func (d *shapeDef) insert(r Row, h *msgHeaders) []byte {
	mh := msgHeaders{op: "insert"}
	if h != nil {
		mh = *h
		mh.op = "insert"
	}
	return d.message("insert", r, d.cols, nil, nil, mh)
}

// render turns the table's transactions into this shape's messages:
// changes of rows the where clause never saw vanish, a row that starts
// matching is an insert, one that stops matching a delete, and an update
// that changed no selected column is dropped.
func (d *shapeDef) render(txs []txn) [][]byte {
	var out [][]byte
	for _, tx := range txs {
		first := len(out)
		for pos, c := range tx.changes {
			h := msgHeaders{lsn: tx.lsn, pos: pos, xid: tx.xid, live: true}
			oldIn, newIn := d.matches(c.old), d.matches(c.new)
			switch {
			case !oldIn && newIn:
				out = append(out, d.insert(c.new, &h))
			case oldIn && !newIn:
				cols := d.t.PK
				if d.full {
					cols = d.cols
				}
				h.op = "delete"
				out = append(out, d.message("delete", c.old, cols, nil, nil, h))
			case oldIn && newIn:
				var changed []int
				for _, i := range d.cols {
					a, b := c.old[i], c.new[i]
					if (a == nil) != (b == nil) || a != nil && *a != *b {
						changed = append(changed, i)
					}
				}
				if len(changed) == 0 {
					continue
				}
				h.op = "update"
				if d.full {
					out = append(out, d.message("update", c.new, d.cols, c.old, changed, h))
				} else {
					out = append(out, d.message("update", c.new, mergeCols(d.t.PK, changed), nil, nil, h))
				}
			}
		}
		if len(out) > first {
			// Mark the transaction's last message (Electric's "last").
			m := out[len(out)-1]
			out[len(out)-1] = append(m[:len(m)-2:len(m)-2], []byte(`,"last":true}}`)...)
		}
	}
	return out
}

func mergeCols(a, b []int) []int {
	seen := map[int]bool{}
	var out []int
	for _, c := range append(append([]int{}, a...), b...) {
		if !seen[c] {
			seen[c] = true
			out = append(out, c)
		}
	}
	return out
}

// schema is the electric-schema header: per selected column its type,
// not_null, and pk_index for the key.
func (d *shapeDef) schema() string {
	var b bytes.Buffer
	b.WriteByte('{')
	for n, c := range d.cols {
		col := d.t.Columns[c]
		if n > 0 {
			b.WriteByte(',')
		}
		jsonStr(&b, col.Name)
		b.WriteString(`:{"type":"` + col.Type + `"`)
		for i, pk := range d.t.PK {
			if pk == c {
				b.WriteString(`,"pk_index":` + strconv.Itoa(i))
			}
		}
		if col.NotNull {
			b.WriteString(`,"not_null":true`)
		}
		b.WriteByte('}')
	}
	b.WriteByte('}')
	return b.String()
}

func contextWithTimeout(r *http.Request, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), d)
}
