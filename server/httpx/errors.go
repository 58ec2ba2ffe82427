package httpx

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"unicode/utf8"

	"github.com/pullwake/pullwake/db"
)

// Error is an error the client gets as {"error": {"code", "message"}}.
type Error struct {
	Status  int
	Code    string
	Message string
	Details any // optional: "details" next to code and message
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf is an Error with status and code, its message formatted.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// BadRequest is a 400 INVALID_REQUEST.
func BadRequest(format string, args ...any) *Error {
	return Errorf(http.StatusBadRequest, "INVALID_REQUEST", format, args...)
}

// Unauthorized is a 401 UNAUTHORIZED.
func Unauthorized(msg string) *Error {
	return Errorf(http.StatusUnauthorized, "UNAUTHORIZED", "%s", msg)
}

// statusOf maps domain codes of the SQL functions to HTTP statuses.
var statusOf = map[string]int{
	"ENTITY_NOT_FOUND": http.StatusNotFound,
	"ENTITY_EXISTS":    http.StatusConflict,
	"ENTITY_STOPPED":   http.StatusConflict,
	"RUNNER_NOT_FOUND": http.StatusNotFound,
	"RUNNER_DISABLED":  http.StatusConflict,
	"CLAIM_NOT_FOUND":  http.StatusNotFound,
	"CLAIM_NOT_ACTIVE": http.StatusConflict,
	"CLAIM_SUPERSEDED": http.StatusConflict,
	"INVALID_REQUEST":  http.StatusBadRequest,
	"STREAM_NOT_FOUND": http.StatusNotFound,
	"RUNNER_EXISTS":    http.StatusConflict,
	"UNAUTHORIZED":     http.StatusUnauthorized,
}

// maxMessage bounds an error message: a message that quotes the input
// (a refused schema, a long value) never echoes it back whole.
const maxMessage = 1024

// CutMessage cuts msg to maxMessage bytes on a rune boundary, marked.
func CutMessage(msg string) string {
	if len(msg) <= maxMessage {
		return msg
	}
	cut := maxMessage
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + fmt.Sprintf("… (%d bytes cut)", len(msg)-cut)
}

// Fail answers with err: an *Error as is, a domain error of the SQL
// functions with its code, a lost database as 503, anything else as 500
// (both logged to log).
func Fail(log *slog.Logger, w http.ResponseWriter, r *http.Request, err error) {
	var ae *Error
	switch {
	case errors.As(err, &ae):
	case db.DomainError(err) != nil:
		de := db.DomainError(err)
		st, ok := statusOf[de.Code]
		if !ok {
			st = http.StatusConflict
		}
		ae = Errorf(st, de.Code, "%s", de.Message)
	case db.Unavailable(err) || errors.Is(err, r.Context().Err()) && r.Context().Err() != nil:
		log.Warn("database unavailable", "method", r.Method, "path", r.URL.Path, "err", err)
		w.Header().Set("Retry-After", "1")
		ae = Errorf(http.StatusServiceUnavailable, "DATABASE_UNAVAILABLE", "the database is unavailable; retry")
	default:
		log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		ae = Errorf(http.StatusInternalServerError, "INTERNAL", "internal error")
	}
	if ae.Status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", "Bearer") // RFC 9110 §11.6.1: every 401 names its scheme
	}
	body := map[string]any{"code": ae.Code, "message": CutMessage(ae.Message)}
	if ae.Details != nil {
		body["details"] = ae.Details
	}
	WriteJSON(w, ae.Status, map[string]any{"error": body})
}
