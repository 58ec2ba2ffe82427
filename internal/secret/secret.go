// Package secret makes and checks bearer tokens: random, 192 bits, compared
// in constant time, stored only as SHA-256 hashes.
package secret

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"strings"
)

// New returns a random token: 24 bytes from crypto/rand, base64url (32 chars).
func New() string {
	var b [24]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// Hash returns the SHA-256 of token, the only form tokens are stored in.
func Hash(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// MatchesHash reports, in constant time, whether token hashes to hash.
func MatchesHash(token string, hash []byte) bool {
	h := sha256.Sum256([]byte(token))
	return subtle.ConstantTimeCompare(h[:], hash) == 1
}

// Equal compares two tokens in time that depends only on their lengths,
// without allocating.
func Equal(a, b string) bool {
	if len(a) != len(b) {
		return false
	}
	// Eight bytes a step (the compiler makes load64 one load): the time
	// depends on the length alone, as before, at an eighth of the steps.
	var v uint64
	i := 0
	for ; i+8 <= len(a); i += 8 {
		v |= load64(a[i:i+8]) ^ load64(b[i:i+8])
	}
	for ; i < len(a); i++ {
		v |= uint64(a[i] ^ b[i])
	}
	v |= v >> 32
	return subtle.ConstantTimeEq(int32(uint32(v)), 0) == 1
}

// load64 reads s[0:8] little-endian.
func load64(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

// Bearer returns the token of an "Authorization: Bearer <token>" header
// value, or "" when the header has another form.
func Bearer(header string) string {
	const prefix = "Bearer "
	if len(header) > len(prefix) && strings.EqualFold(header[:len(prefix)], prefix) {
		return strings.TrimSpace(header[len(prefix):])
	}
	return ""
}
