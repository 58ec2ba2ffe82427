// Package runbook holds the test that keeps docs/operations.md honest: it
// runs every ```sql block of the psql runbook, in order, against a test
// database with leaked claims and checks each returns what the doc says.
// There is no code here; the SQL lives in the doc.
package runbook
