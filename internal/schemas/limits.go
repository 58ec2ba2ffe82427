package schemas

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// Caps of one entity type, checked at every registration and amendment
// (CheckSize): a type's schemas are compiled in the servers' memory and
// read with every typed spawn and send, so their number and size are
// bounded however many amendments add to them.
const (
	// MaxSchemas is the most schemas a type holds: creation_schema plus
	// the entries of inbox_schemas and state_schemas.
	MaxSchemas = 256
	// MaxTypeBytes is the most bytes of JSON a type's schemas take
	// together (creation_schema, inbox_schemas, state_schemas).
	MaxTypeBytes = 512 << 10
	// DefaultCompileBudget bounds how long a spawn or send waits for its
	// type's schemas to compile, apart from the request's database
	// deadline (Validator.Budget).
	DefaultCompileBudget = 2 * time.Second
)

// TooLargeError: a registration or amendment would make the type pass a
// cap. Nothing was written.
type TooLargeError struct {
	Type  string
	What  string // "schemas" or "bytes"
	Have  int
	Limit int
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("entity type %q would hold %d %s of schemas, over the limit of %d", e.Type, e.Have, e.What, e.Limit)
}

// CompileBudgetError: a type's schemas did not compile within the budget.
// The compilation goes on; a later request may find it done.
type CompileBudgetError struct {
	Type     string
	Revision int64
	Budget   time.Duration
}

func (e *CompileBudgetError) Error() string {
	return fmt.Sprintf("entity type %q (revision %d): its schemas did not compile within %s; retry, or register a smaller type",
		e.Type, e.Revision, e.Budget)
}

// CheckSize checks a type's schemas as they would be stored against
// MaxSchemas and MaxTypeBytes.
func CheckSize(name string, creation, inbox, state json.RawMessage) error {
	n, size := 0, 0
	if t := bytes.TrimSpace(creation); len(t) > 0 && string(t) != "null" {
		n++
		size += len(t)
	}
	for _, f := range []struct {
		name string
		raw  json.RawMessage
	}{{"inbox_schemas", inbox}, {"state_schemas", state}} {
		m, err := schemaMap(f.name, f.raw)
		if err != nil {
			return err
		}
		n += len(m)
		size += len(bytes.TrimSpace(f.raw))
	}
	if n > MaxSchemas {
		return &TooLargeError{Type: name, What: "schemas", Have: n, Limit: MaxSchemas}
	}
	if size > MaxTypeBytes {
		return &TooLargeError{Type: name, What: "bytes", Have: size, Limit: MaxTypeBytes}
	}
	return nil
}
