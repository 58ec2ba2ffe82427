package httpx

import (
	"bytes"
	"encoding/json"
	"net/url"
	"strings"
)

// JSONObject returns v when it is a JSON object, nil when absent or null,
// and an error naming field otherwise.
func JSONObject(v json.RawMessage, field string) (json.RawMessage, error) {
	t := bytes.TrimSpace(v)
	switch {
	case len(t) == 0 || string(t) == "null":
		return nil, nil
	case t[0] != '{':
		return nil, BadRequest("field %s: must be an object", field)
	}
	return t, nil
}

// MaxOutboundURL is the longest URL the server accepts to call.
const MaxOutboundURL = 2048

// CheckOutboundURL is the rule for every URL the server calls (a webhook,
// a serve endpoint), field naming it in the error: absolute http(s) URLs
// with a host, nothing else; no other scheme, no relative URL.
func CheckOutboundURL(field, raw string) error {
	if raw == "" || len(raw) > MaxOutboundURL {
		return BadRequest("field %s: must be 1 to %d characters", field, MaxOutboundURL)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return BadRequest("field %s: not a URL: %v", field, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return BadRequest("field %s: only http and https URLs are called, got %q", field, u.Scheme)
	}
	if u.Host == "" || u.Hostname() == "" {
		return BadRequest("field %s: needs a host", field)
	}
	if strings.ContainsAny(raw, " \t\r\n") {
		return BadRequest("field %s: must not contain whitespace", field)
	}
	return nil
}
