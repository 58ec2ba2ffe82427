// Package migrations holds pullwake's goose migrations: every table, and
// the steps that bring the plpgsql functions, triggers and views to their
// source in sql/ (written by make migration, internal/sqlsource). Goose
// alone builds the whole schema from them. They are embedded so the binary
// migrates without the source tree.
package migrations

import "embed"

// FS holds every migration file.
//
//go:embed *.sql
var FS embed.FS
