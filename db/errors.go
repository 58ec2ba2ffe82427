package db

import (
	"context"
	"errors"
	"net"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Domain error codes raised by the plpgsql functions (SQLSTATE class PW,
// see migrations/00002_lifecycle.sql), as the API spells them.
var sqlStateCodes = map[string]string{
	"PW001": "ENTITY_NOT_FOUND",
	"PW002": "ENTITY_EXISTS",
	"PW003": "ENTITY_STOPPED",
	"PW004": "RUNNER_NOT_FOUND",
	"PW005": "RUNNER_DISABLED",
	"PW006": "CLAIM_NOT_FOUND",
	"PW007": "CLAIM_NOT_ACTIVE",
	"PW008": "INVALID_REQUEST",
	"PW009": "STREAM_NOT_FOUND",
	"PW010": "RUNNER_EXISTS",
	"PW011": "STREAM_CONFLICT",
	"PW012": "STREAM_CLOSED",
	"PW013": "UNAUTHORIZED",
}

// Error is a domain error raised by a lifecycle function.
type Error struct {
	Code    string // e.g. CLAIM_NOT_ACTIVE
	Message string // the function's message, e.g. "claim wake-3/2 is not active"
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// ErrNotFound is returned for "no rows" (zero rows is an answer, not a failure).
var ErrNotFound = pgx.ErrNoRows

// DomainError returns the domain error err carries, or nil.
func DomainError(err error) *Error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		if code, ok := sqlStateCodes[pgErr.Code]; ok {
			return &Error{Code: code, Message: pgErr.Message}
		}
	}
	return nil
}

// Unavailable reports whether err means the database could not be reached
// or the connection was lost (the caller should answer 503 and retry later),
// as opposed to a query the database rejected.
func Unavailable(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:2] {
		case "08", "57": // connection exception; operator intervention (admin shutdown, terminated)
			return true
		}
		return pgErr.Code == "53300" // too many connections
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	var connErr *pgconn.ConnectError
	if errors.As(err, &connErr) {
		return true
	}
	if pgconn.SafeToRetry(err) || pgconn.Timeout(err) || errors.Is(err, net.ErrClosed) {
		return true
	}
	// pgx reports a connection that died mid-query by message only.
	s := err.Error()
	for _, m := range []string{"conn closed", "unexpected EOF", "broken pipe", "connection reset", "closed pool"} {
		if strings.Contains(s, m) {
			return true
		}
	}
	return false
}
