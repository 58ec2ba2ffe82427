// Package sqlsource keeps pullwake's plpgsql functions, triggers and views in
// one home each: the files of sql/ (every *.sql there except the generated
// sql/schema.sql). Tables stay in the versioned goose migrations of
// migrations/; a change to a function is made in its sql/ file, and
// `make migration name=...` (internal/tools/sqlmigration) writes the goose
// migration from the difference, so goose alone still builds the whole
// schema from migrations/.
//
// Both directions rest on one comparison. Check applies the sql/ files, in
// one transaction that it rolls back, to a database migrated to the latest
// migration, and reports every function, trigger and view whose definition
// (pg_get_functiondef, pg_get_triggerdef, pg_get_viewdef) the files change,
// that the files define and the migrations do not, or that the migrations
// define and no file does. The test of this package runs it against the
// repository's sql/ and migrations/: it fails when they disagree. Generate
// turns the same list into a migration (Up: the files' definitions; Down:
// the previous ones) and proves it by applying it, checking again, and
// rolling it back.
//
// Which objects a file defines is recorded by an event trigger while the
// files run (so the catalog, not a parser, says what each statement
// created), which is why the database user must be a superuser: the test
// cluster's and a developer's local one are. The files may hold only
// CREATE OR REPLACE FUNCTION / PROCEDURE / TRIGGER / VIEW and CREATE
// CONSTRAINT TRIGGER statements; anything else (a table, an index, an
// ALTER, a COMMENT) is refused, naming the file. Views and constraint
// triggers are dropped before the files run and made again by them, as
// CREATE OR REPLACE cannot change every part of them.
//
// This package never touches a database it was not handed; it writes a file
// only in Generate, into the migrations directory it is given.
package sqlsource
