// Package migrations holds pullwake's goose migrations: the single source of
// truth for its tables and its plpgsql lifecycle functions. They are
// embedded so the binary migrates without the source tree.
package migrations

import "embed"

// FS holds every migration file.
//
//go:embed *.sql
var FS embed.FS
