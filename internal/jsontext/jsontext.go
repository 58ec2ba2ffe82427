// Package jsontext checks request text before it can reach PostgreSQL.
//
// PostgreSQL refuses some values that Go's encoding/json and net/http let
// through: a NUL in text (invalid byte sequence), \u0000 and lone UTF-16
// surrogates in jsonb (unsupported Unicode escape, invalid input syntax),
// numbers beyond numeric's range (value overflows numeric format), and any
// invalid UTF-8. Each of those would surface as a failed query, a 500.
// The server checks every JSON body, path and query with this package at
// the edge and answers 400 instead.
//
// What this package must not do: decide anything about the API's fields;
// it only knows what the database cannot store.
package jsontext

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// Number limits: a number must parse as a float64 (1e309 does not), its
// written exponent must lie within ±MaxExponent (PostgreSQL's numeric
// refuses 1e-20000 and even 0e-99999), and its text must be at most
// MaxNumberLen bytes (numeric keeps at most 16383 fraction digits).
//
// MaxDepth bounds nesting: PostgreSQL parses jsonb recursively and a deep
// enough value exhausts its stack ("stack depth limit exceeded").
const (
	MaxExponent  = 400
	MaxNumberLen = 512
	MaxDepth     = 512
)

// CheckText returns "" when s is valid UTF-8 without a NUL, else why not.
func CheckText(s string) string {
	if !utf8.ValidString(s) {
		return "not valid UTF-8"
	}
	if strings.IndexByte(s, 0) >= 0 {
		return "contains a NUL character"
	}
	return ""
}

// Check returns "" when body, a syntactically valid JSON text, can be
// stored as PostgreSQL jsonb and its strings as text: valid UTF-8, no NUL
// (\u0000) in any string or key, no lone surrogate escape, every number
// within the limits above, nesting at most MaxDepth deep. Otherwise it says
// what is wrong, and where.
func Check(body []byte) string {
	if !utf8.Valid(body) {
		return "the body is not valid UTF-8"
	}
	depth := 0
	for i := 0; i < len(body); {
		c := body[i]
		switch {
		case c == '[' || c == '{':
			if depth++; depth > MaxDepth {
				return "arrays and objects nest deeper than " + strconv.Itoa(MaxDepth) + " levels (at byte " + strconv.Itoa(i) + ")"
			}
			i++
		case c == ']' || c == '}':
			depth--
			i++
		case c == '"':
			end, msg := checkString(body, i+1)
			if msg != "" {
				return msg
			}
			i = end
		case c == '-' || (c >= '0' && c <= '9'):
			j := i + 1
			for j < len(body) && isNumberByte(body[j]) {
				j++
			}
			if msg := checkNumber(string(body[i:j])); msg != "" {
				return msg + " (at byte " + strconv.Itoa(i) + ")"
			}
			i = j
		default:
			i++
		}
	}
	return ""
}

func isNumberByte(c byte) bool {
	return c >= '0' && c <= '9' || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-'
}

// checkString scans a string whose opening quote ends at i; it returns the
// index after the closing quote.
func checkString(b []byte, i int) (int, string) {
	start := i - 1
	for i < len(b) {
		switch b[i] {
		case '"':
			return i + 1, ""
		case 0:
			return 0, "a string contains a NUL character (at byte " + strconv.Itoa(i) + ")"
		case '\\':
			if i+1 < len(b) && b[i+1] == 'u' {
				r, ok := hex4(b, i+2)
				if !ok {
					return 0, "a string has a malformed \\u escape (at byte " + strconv.Itoa(i) + ")"
				}
				switch {
				case r == 0:
					return 0, "a string contains \\u0000 (at byte " + strconv.Itoa(i) + ")"
				case r >= 0xD800 && r <= 0xDBFF:
					lo, ok := -1, false
					if i+7 < len(b) && b[i+6] == '\\' && b[i+7] == 'u' {
						lo, ok = hex4(b, i+8)
					}
					if !ok || lo < 0xDC00 || lo > 0xDFFF {
						return 0, "a string contains a lone UTF-16 surrogate (at byte " + strconv.Itoa(i) + ")"
					}
					i += 12
					continue
				case r >= 0xDC00 && r <= 0xDFFF:
					return 0, "a string contains a lone UTF-16 surrogate (at byte " + strconv.Itoa(i) + ")"
				}
				i += 6
				continue
			}
			i += 2
		default:
			i++
		}
	}
	return 0, "an unterminated string (at byte " + strconv.Itoa(start) + ")"
}

func hex4(b []byte, i int) (int, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	n, err := strconv.ParseUint(string(b[i:i+4]), 16, 32)
	return int(n), err == nil
}

func checkNumber(s string) string {
	if len(s) > MaxNumberLen {
		return "a number is longer than " + strconv.Itoa(MaxNumberLen) + " characters"
	}
	if _, err := strconv.ParseFloat(s, 64); err != nil {
		return "a number is out of range"
	}
	if k := strings.IndexAny(s, "eE"); k >= 0 {
		e, err := strconv.Atoi(strings.TrimPrefix(s[k+1:], "+"))
		if err != nil || e > MaxExponent || e < -MaxExponent {
			return "a number's exponent is out of range (at most ±" + strconv.Itoa(MaxExponent) + ")"
		}
	}
	return ""
}
