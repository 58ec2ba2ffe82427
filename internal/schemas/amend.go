package schemas

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
)

// ConflictError: an amendment would change (or drop) the schema of a
// message or state type that is registered already.
type ConflictError struct {
	Field string // inbox_schemas or state_schemas
	Key   string
	// Removed is true when the new map lacks the key, false when it holds
	// another schema under it.
	Removed bool
}

func (e *ConflictError) Error() string {
	if e.Removed {
		return fmt.Sprintf("%s.%s is registered and cannot be removed: schema keys may be added, never changed", e.Field, e.Key)
	}
	return fmt.Sprintf("%s.%s is registered with another schema: schema keys may be added, never changed", e.Field, e.Key)
}

// sameJSON reports whether a and b are the same JSON value (object key
// order and spacing aside; numbers compared as written).
func sameJSON(a, b json.RawMessage) bool {
	var va, vb any
	da := json.NewDecoder(bytes.NewReader(a))
	da.UseNumber()
	db := json.NewDecoder(bytes.NewReader(b))
	db.UseNumber()
	if da.Decode(&va) != nil || db.Decode(&vb) != nil {
		return false
	}
	return reflect.DeepEqual(va, vb)
}

// CheckReplace is the amend rule for a re-registration that gives the
// whole map: every key of old must be in next with the same schema; next
// may add keys. An absent map counts as empty. The first offending key (in
// name order) is a *ConflictError.
func CheckReplace(field string, old, next json.RawMessage) error {
	om, err := schemaMap(field, old)
	if err != nil {
		return err
	}
	nm, err := schemaMap(field, next)
	if err != nil {
		return err
	}
	for _, k := range sortedKeys(om) {
		n, ok := nm[k]
		if !ok {
			return &ConflictError{Field: field, Key: k, Removed: true}
		}
		if !sameJSON(om[k], n) {
			return &ConflictError{Field: field, Key: k}
		}
	}
	return nil
}

// Merge is the amend rule for an amendment that gives only keys to add:
// the result holds old's keys and add's. A key of add that old holds with
// another schema is a *ConflictError; with the same schema it changes
// nothing. changed reports whether any key was added. An absent add
// returns old as it is.
func Merge(field string, old, add json.RawMessage) (merged json.RawMessage, changed bool, err error) {
	om, err := schemaMap(field, old)
	if err != nil {
		return nil, false, err
	}
	am, err := schemaMap(field, add)
	if err != nil {
		return nil, false, err
	}
	if am == nil {
		return old, false, nil
	}
	out := make(map[string]json.RawMessage, len(om)+len(am))
	for k, v := range om {
		out[k] = v
	}
	for _, k := range sortedKeys(am) {
		if o, ok := om[k]; ok {
			if !sameJSON(o, am[k]) {
				return nil, false, &ConflictError{Field: field, Key: k}
			}
			continue
		}
		out[k] = am[k]
		changed = true
	}
	if om == nil && len(am) == 0 {
		changed = true // null -> {}: typed sends now refused
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, false, fmt.Errorf("encode %s: %w", field, err)
	}
	return b, changed, nil
}
