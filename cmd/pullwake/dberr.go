package main

import (
	"errors"
	"fmt"
	"net/url"

	"github.com/jackc/pgx/v5/pgconn"
)

// explainDB adds the cause and the way out to a database error an operator
// command met: a server that does not answer, a database that does not
// exist, a login refused, a schema not migrated. Other errors come back as
// they are.
func explainDB(dbURL string, err error) error {
	var done *dbHint
	if err == nil || errors.As(err, &done) {
		return err
	}
	where := "the database"
	if u, perr := url.Parse(dbURL); perr == nil && u.Host != "" {
		where = "the database " + u.Host + u.Path
	}
	var pgErr *pgconn.PgError
	var connErr *pgconn.ConnectError
	switch {
	case errors.As(err, &pgErr) && pgErr.Code == "42P01", errors.As(err, &pgErr) && pgErr.Code == "42883":
		return &dbHint{err, fmt.Sprintf("%s is not migrated (a table or function pullwake needs is missing): run `pullwake migrate up` with the same DATABASE_URL", where)}
	case errors.As(err, &pgErr) && pgErr.Code == "3D000":
		return &dbHint{err, fmt.Sprintf("%s does not exist: create it (createdb), or point DATABASE_URL at one that does (`make run` prints the one it uses)", where)}
	case errors.As(err, &pgErr) && (pgErr.Code == "28P01" || pgErr.Code == "28000"):
		return &dbHint{err, fmt.Sprintf("%s refused the login: check the user and password in DATABASE_URL", where)}
	case errors.As(err, &connErr):
		return &dbHint{err, fmt.Sprintf("no PostgreSQL answered at %s: check DATABASE_URL (host, port, database), or start the server (`make run` starts one and prints its URL)", where)}
	}
	return err
}

// dbHint is a database error with the cause and the way out.
type dbHint struct {
	err  error
	hint string
}

func (h *dbHint) Error() string { return h.err.Error() + "\n" + h.hint }
func (h *dbHint) Unwrap() error { return h.err }
