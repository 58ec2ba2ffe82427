package server

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/jsontext"
)

// maxBody is the largest request body the JSON API accepts.
const maxBody = 1 << 20

var (
	entityTypeRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,63}$`)
	idRE         = regexp.MustCompile(`^[A-Za-z0-9._~-]{1,128}$`)
)

// apiError is an error the client gets as {"error": {"code", "message"}}.
type apiError struct {
	status  int
	code    string
	message string
	details any // optional: "details" next to code and message
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

func errf(status int, code, format string, args ...any) *apiError {
	return &apiError{status: status, code: code, message: fmt.Sprintf(format, args...)}
}

func badRequest(format string, args ...any) *apiError {
	return errf(http.StatusBadRequest, "INVALID_REQUEST", format, args...)
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

// cutMessage cuts msg to maxMessage bytes on a rune boundary, marked.
func cutMessage(msg string) string {
	if len(msg) <= maxMessage {
		return msg
	}
	cut := maxMessage
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + fmt.Sprintf("… (%d bytes cut)", len(msg)-cut)
}

// writeJSON writes v with status. Not HTML-escaped: answers are JSON for
// programs, and an error that names <token> should read so.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// fail answers with err: an *apiError as is, a domain error of the SQL
// functions with its code, a lost database as 503, anything else as 500.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	switch {
	case errors.As(err, &ae):
	case db.DomainError(err) != nil:
		de := db.DomainError(err)
		st, ok := statusOf[de.Code]
		if !ok {
			st = http.StatusConflict
		}
		ae = errf(st, de.Code, "%s", de.Message)
	case db.Unavailable(err) || errors.Is(err, r.Context().Err()) && r.Context().Err() != nil:
		s.log.Warn("database unavailable", "method", r.Method, "path", r.URL.Path, "err", err)
		w.Header().Set("Retry-After", "1")
		ae = errf(http.StatusServiceUnavailable, "DATABASE_UNAVAILABLE", "the database is unavailable; retry")
	default:
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		ae = errf(http.StatusInternalServerError, "INTERNAL", "internal error")
	}
	if ae.status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", "Bearer") // RFC 9110 §11.6.1: every 401 names its scheme
	}
	body := map[string]any{"code": ae.code, "message": cutMessage(ae.message)}
	if ae.details != nil {
		body["details"] = ae.details
	}
	writeJSON(w, ae.status, map[string]any{"error": body})
}

// decode reads a JSON object body into v. An empty body leaves v as is.
// Unknown fields are ignored; a wrong type names the field.
func decode(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return errf(http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE", "request body is over %d bytes", maxBody)
		}
		return badRequest("reading body: %v", err)
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return nil
	}
	if !utf8.Valid(body) {
		return badRequest("the body is not valid UTF-8")
	}
	if err := json.Unmarshal(body, v); err != nil {
		var te *json.UnmarshalTypeError
		var se *json.SyntaxError
		switch {
		case errors.As(err, &te) && te.Field != "":
			return badRequest("field %s: must be %s, not %s", te.Field, jsonKind(te.Type.Kind().String()), te.Value)
		case errors.As(err, &te):
			return badRequest("body must be a JSON object, not %s", te.Value)
		case errors.As(err, &se):
			return badRequest("malformed JSON at byte %d: %v", se.Offset, err)
		default:
			return badRequest("malformed JSON: %v", err)
		}
	}
	if msg := jsontext.Check(body); msg != "" {
		return badRequest("%s", msg)
	}
	return nil
}

// checkText refuses a request whose path or query holds invalid UTF-8 or a
// NUL: PostgreSQL text takes neither, and such a value would otherwise
// reach a query as an error (a 500) instead of a 400.
func checkText(r *http.Request) error {
	if msg := jsontext.CheckText(r.URL.Path); msg != "" {
		return badRequest("path: %s", msg)
	}
	for k, vs := range r.URL.Query() {
		if msg := jsontext.CheckText(k); msg != "" {
			return badRequest("query parameter name: %s", msg)
		}
		for _, v := range vs {
			if msg := jsontext.CheckText(v); msg != "" {
				return badRequest("query parameter %s: %s", k, msg)
			}
		}
	}
	return nil
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "bool":
		return "a boolean"
	case "int", "int32", "int64", "float64", "uint32", "uint64":
		return "a number"
	case "slice":
		return "an array"
	case "struct", "map":
		return "an object"
	}
	return goKind
}

// entityURL validates the {type}/{id} path values.
func entityURL(r *http.Request) (string, error) {
	typ, id := r.PathValue("type"), r.PathValue("id")
	if !entityTypeRE.MatchString(typ) {
		return "", badRequest("entity type %q must match %s", typ, entityTypeRE)
	}
	if !idRE.MatchString(id) {
		return "", badRequest("entity id %q must match %s", id, idRE)
	}
	return "/" + typ + "/" + id, nil
}
