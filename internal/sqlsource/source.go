package sqlsource

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// File is one source file of sql/.
type File struct {
	Name string // its path as read, e.g. sql/lifecycle.sql
	SQL  string
}

// generatedMarker starts the first line of a generated file (Go's
// convention), such as sql/schema.sql: such a file is not a source.
const generatedMarker = "-- Code generated"

// Files reads the source files of dir: every *.sql file in it (not in its
// subdirectories) except generated ones, in name order, which is the order
// they are applied in.
func Files(dir string) ([]File, error) {
	names, err := filepath.Glob(filepath.Join(dir, "*.sql"))
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	slices.Sort(names)
	var out []File
	for _, n := range names {
		b, err := os.ReadFile(n)
		if err != nil {
			return nil, fmt.Errorf("read source: %w", err)
		}
		if strings.HasPrefix(string(b), generatedMarker) {
			continue
		}
		out = append(out, File{Name: filepath.ToSlash(n), SQL: string(b)})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no source files in %s", dir)
	}
	return out, nil
}
