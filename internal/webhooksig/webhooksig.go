// Package webhooksig signs push deliveries the way Durable Streams webhooks
// are signed and Electric's runtime verifies them, and verifies such
// signatures (for tests and for receivers written in Go).
//
// Scheme: header Webhook-Signature: t=<unix seconds>,kid=<key id>,ed25519=<sig>
// where sig is the unpadded base64url Ed25519 signature of the bytes
// "<t>." followed by the exact request body. The public keys are published
// as a JSON Web Key Set (kty OKP, crv Ed25519) at /__ds/jwks.json; kid is
// "ds_" plus the base64url SHA-256 of the key's RFC 7638 thumbprint input.
//
// It holds no global state: a Signer is built from configuration.
package webhooksig

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Header is the request header that carries the signature.
const Header = "Webhook-Signature"

// JWK is one public key of a JWKS.
type JWK struct {
	Kty string `json:"kty"`
	Crv string `json:"crv"`
	X   string `json:"x"`
	Kid string `json:"kid"`
	Use string `json:"use,omitempty"`
	Alg string `json:"alg,omitempty"`
}

// JWKS is a JSON Web Key Set.
type JWKS struct {
	Keys []JWK `json:"keys"`
}

// Signer signs bodies with one Ed25519 key.
type Signer struct {
	priv ed25519.PrivateKey
	jwk  JWK
}

// New builds a signer from a 32-byte Ed25519 seed.
func New(seed []byte) (*Signer, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("webhook signing key: want a %d-byte Ed25519 seed, got %d bytes", ed25519.SeedSize, len(seed))
	}
	priv := ed25519.NewKeyFromSeed(seed)
	x := base64.RawURLEncoding.EncodeToString(priv.Public().(ed25519.PublicKey))
	thumb := sha256.Sum256([]byte(`{"crv":"Ed25519","kty":"OKP","x":"` + x + `"}`))
	return &Signer{priv: priv, jwk: JWK{Kty: "OKP", Crv: "Ed25519", X: x,
		Kid: "ds_" + base64.RawURLEncoding.EncodeToString(thumb[:]), Use: "sig", Alg: "EdDSA"}}, nil
}

// Parse builds a signer from the configured key: a 32-byte seed in base64
// (standard or URL alphabet, padded or not) or 64 hex digits.
func Parse(s string) (*Signer, error) {
	s = strings.TrimSpace(s)
	for _, enc := range []*base64.Encoding{base64.RawURLEncoding, base64.URLEncoding, base64.RawStdEncoding, base64.StdEncoding} {
		if b, err := enc.DecodeString(s); err == nil && len(b) == ed25519.SeedSize {
			return New(b)
		}
	}
	if len(s) == 2*ed25519.SeedSize {
		b := make([]byte, ed25519.SeedSize)
		ok := true
		for i := range b {
			v, err := strconv.ParseUint(s[2*i:2*i+2], 16, 8)
			if err != nil {
				ok = false
				break
			}
			b[i] = byte(v)
		}
		if ok {
			return New(b)
		}
	}
	return nil, errors.New("webhook signing key: want a 32-byte Ed25519 seed as base64 (43 or 44 characters) or 64 hex digits")
}

// Generate returns a signer with a fresh random key (lost at exit).
func Generate() *Signer {
	seed := make([]byte, ed25519.SeedSize)
	_, _ = rand.Read(seed) // crypto/rand.Read never fails (Go 1.24+)
	s, _ := New(seed)
	return s
}

// KeyID is the key's kid.
func (s *Signer) KeyID() string { return s.jwk.Kid }

// JWKS is the public key set to publish.
func (s *Signer) JWKS() JWKS { return JWKS{Keys: []JWK{s.jwk}} }

// Sign returns the Webhook-Signature value for body, timestamped now.
func (s *Signer) Sign(body []byte, now time.Time) string {
	t := strconv.FormatInt(now.Unix(), 10)
	sig := ed25519.Sign(s.priv, signedBytes(t, body))
	return "t=" + t + ",kid=" + s.jwk.Kid + ",ed25519=" + base64.RawURLEncoding.EncodeToString(sig)
}

func signedBytes(t string, body []byte) []byte {
	b := make([]byte, 0, len(t)+1+len(body))
	b = append(b, t...)
	b = append(b, '.')
	return append(b, body...)
}

// Verify checks header against body with the keys of set: the header
// parses, its timestamp is within tolerance of now, its kid is in the set,
// and the signature verifies.
func Verify(body []byte, header string, set JWKS, now time.Time, tolerance time.Duration) error {
	var t, kid, sig string
	for _, part := range strings.Split(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || k == "" || v == "" {
			return errors.New("malformed signature header")
		}
		switch k {
		case "t":
			t = v
		case "kid":
			kid = v
		case "ed25519":
			sig = v
		}
	}
	if t == "" || kid == "" || sig == "" {
		return errors.New("signature header lacks t, kid or ed25519")
	}
	ts, err := strconv.ParseInt(t, 10, 64)
	if err != nil || ts < 0 {
		return errors.New("signature timestamp is not a number")
	}
	if d := now.Sub(time.Unix(ts, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("signature timestamp %d is outside the %s window", ts, tolerance)
	}
	raw, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil {
		return errors.New("signature is not unpadded base64url")
	}
	for _, k := range set.Keys {
		if k.Kid != kid {
			continue
		}
		if k.Kty != "OKP" || k.Crv != "Ed25519" {
			return fmt.Errorf("key %s is not an Ed25519 key", kid)
		}
		pub, err := base64.RawURLEncoding.DecodeString(k.X)
		if err != nil || len(pub) != ed25519.PublicKeySize {
			return fmt.Errorf("key %s has a malformed x", kid)
		}
		if !ed25519.Verify(ed25519.PublicKey(pub), signedBytes(t, body), raw) {
			return errors.New("signature does not verify")
		}
		return nil
	}
	return fmt.Errorf("unknown signing key %s", kid)
}
