package groupcommit

import (
	"errors"

	"github.com/jackc/pgx/v5/pgconn"
)

// PgClassify sorts a whole-batch error from a PostgreSQL statement run as
// its own transaction:
//   - deadlock (40P01) or serialization failure (40001): Transient;
//   - nothing was sent (pgconn.SafeToRetry): Transient;
//   - a connection, resource or operator error (classes 08, 53, 57): the
//     statement was rolled back, but splitting would only meet the same
//     outage item by item: every item gets the error (MayHaveCommitted's
//     handling);
//   - any other error the server reported: the statement, and with it the
//     transaction, failed: RolledBack;
//   - anything else (the connection died before an answer came):
//     MayHaveCommitted.
func PgClassify(err error) Failure {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		switch {
		case pe.Code == "40P01" || pe.Code == "40001":
			return Transient
		case len(pe.Code) >= 2 && (pe.Code[:2] == "08" || pe.Code[:2] == "53" || pe.Code[:2] == "57"):
			return MayHaveCommitted
		}
		return RolledBack
	}
	if pgconn.SafeToRetry(err) {
		return Transient
	}
	return MayHaveCommitted
}

// PgRetryable reports whether an item's own error (from a per-item
// outcome of a set-based function) is a deadlock or serialization
// failure: the item's subtransaction rolled back and it may be run again.
func PgRetryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40P01" || pe.Code == "40001")
}

// PgItemError turns a per-item outcome (err_code, err_message columns)
// into the error the single-item function would have raised, so callers
// map it exactly as before (db.DomainError); nil when code is "".
func PgItemError(code, message string) error {
	if code == "" {
		return nil
	}
	return &pgconn.PgError{Severity: "ERROR", Code: code, Message: message}
}
