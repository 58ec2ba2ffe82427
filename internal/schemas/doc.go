// Package schemas enforces the JSON Schemas of registered entity types:
// a type's creation_schema checks the arguments of a spawn, its
// inbox_schemas check a send by message type, and the amend rule keeps a
// registered schema key from ever changing meaning.
//
// Each type's schemas are compiled once per revision of the type (the
// revision bumps on every change of the row) and kept until the type's
// revision moves on or the type is deleted. The schema library is
// github.com/santhosh-tekuri/jsonschema/v6; schemas without "$schema" are
// read as draft-07 (what Electric's server uses), and a "$ref" may only
// point inside the schema itself: nothing is ever loaded from a file or
// the network.
//
// The package decides nothing about HTTP: it answers typed errors
// (UnknownTypeError, UnknownMessageTypeError, InvalidError,
// ConflictError, SchemaError) that the server encodes per route prefix. It
// does not read the database itself: the server hands it a Source.
package schemas
