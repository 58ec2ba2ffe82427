package httpx

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/pullwake/pullwake/internal/jsontext"
)

// MaxBody is the largest request body the JSON API accepts.
const MaxBody = 1 << 20

var (
	// EntityTypeRE is an entity type's name (the {type} of /{type}/{id}).
	EntityTypeRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,63}$`)
	// IDRE is an id: of an entity, a runner, a consumer, a subscription.
	IDRE = regexp.MustCompile(`^[A-Za-z0-9._~-]{1,128}$`)
)

// WriteJSON writes v with status. Not HTML-escaped: answers are JSON for
// programs, and an error that names <token> should read so.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// Decode reads a JSON object body into v. An empty body leaves v as is.
// Unknown fields are ignored; a wrong type names the field.
func Decode(w http.ResponseWriter, r *http.Request, v any) error {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return Errorf(http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE", "request body is over %d bytes", MaxBody)
		}
		return BadRequest("reading body: %v", err)
	}
	if len(strings.TrimSpace(string(body))) == 0 {
		return nil
	}
	if !utf8.Valid(body) {
		return BadRequest("the body is not valid UTF-8")
	}
	if err := json.Unmarshal(body, v); err != nil {
		var te *json.UnmarshalTypeError
		var se *json.SyntaxError
		switch {
		case errors.As(err, &te) && te.Field != "":
			return BadRequest("field %s: must be %s, not %s", te.Field, jsonKind(te.Type.Kind().String()), te.Value)
		case errors.As(err, &te):
			return BadRequest("body must be a JSON object, not %s", te.Value)
		case errors.As(err, &se):
			return BadRequest("malformed JSON at byte %d: %v", se.Offset, err)
		default:
			return BadRequest("malformed JSON: %v", err)
		}
	}
	if msg := jsontext.Check(body); msg != "" {
		return BadRequest("%s", msg)
	}
	return nil
}

// CheckText refuses a request whose path or query holds invalid UTF-8 or a
// NUL: PostgreSQL text takes neither, and such a value would otherwise
// reach a query as an error (a 500) instead of a 400.
func CheckText(r *http.Request) error {
	if msg := jsontext.CheckText(r.URL.Path); msg != "" {
		return BadRequest("path: %s", msg)
	}
	for k, vs := range r.URL.Query() {
		if msg := jsontext.CheckText(k); msg != "" {
			return BadRequest("query parameter name: %s", msg)
		}
		for _, v := range vs {
			if msg := jsontext.CheckText(v); msg != "" {
				return BadRequest("query parameter %s: %s", k, msg)
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

// EntityURL validates the {type}/{id} path values.
func EntityURL(r *http.Request) (string, error) {
	typ, id := r.PathValue("type"), r.PathValue("id")
	if !EntityTypeRE.MatchString(typ) {
		return "", BadRequest("entity type %q must match %s", typ, EntityTypeRE)
	}
	if !IDRE.MatchString(id) {
		return "", BadRequest("entity id %q must match %s", id, IDRE)
	}
	return "/" + typ + "/" + id, nil
}
