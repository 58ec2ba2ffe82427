package webhooksig

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"
	"time"
)

func TestSignVerify(t *testing.T) {
	t.Parallel()
	s := Generate()
	now := time.Unix(1_800_000_000, 0)
	body := []byte(`{"wake_id":"wake-1"}`)
	h := s.Sign(body, now)
	if !strings.HasPrefix(h, "t=1800000000,kid="+s.KeyID()+",ed25519=") {
		t.Fatalf("header %q", h)
	}
	if err := Verify(body, h, s.JWKS(), now.Add(time.Minute), 5*time.Minute); err != nil {
		t.Fatalf("verify: %v", err)
	}
	cases := map[string]func() error{
		"tampered body": func() error { return Verify([]byte(`{"wake_id":"wake-2"}`), h, s.JWKS(), now, time.Minute) },
		"stale":         func() error { return Verify(body, h, s.JWKS(), now.Add(10*time.Minute), 5*time.Minute) },
		"other key":     func() error { return Verify(body, h, Generate().JWKS(), now, time.Minute) },
		"malformed":     func() error { return Verify(body, "t=1,kid", s.JWKS(), now, time.Minute) },
		"missing":       func() error { return Verify(body, "", s.JWKS(), now, time.Minute) },
	}
	for name, f := range cases {
		if f() == nil {
			t.Errorf("%s: verified", name)
		}
	}
}

// The kid is the base64url SHA-256 of the RFC 7638 thumbprint input,
// prefixed "ds_"; x is the raw public key, base64url.
func TestKeyIDAndParse(t *testing.T) {
	t.Parallel()
	seed := make([]byte, 32)
	for i := range seed {
		seed[i] = byte(i)
	}
	s, err := Parse(base64.StdEncoding.EncodeToString(seed))
	if err != nil {
		t.Fatal(err)
	}
	pub := ed25519.NewKeyFromSeed(seed).Public().(ed25519.PublicKey)
	x := base64.RawURLEncoding.EncodeToString(pub)
	sum := sha256.Sum256([]byte(`{"crv":"Ed25519","kty":"OKP","x":"` + x + `"}`))
	if k := s.JWKS().Keys[0]; k.X != x || k.Kid != "ds_"+base64.RawURLEncoding.EncodeToString(sum[:]) {
		t.Fatalf("jwk %+v", k)
	}
	hex := "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
	s2, err := Parse(hex)
	if err != nil || s2.KeyID() != s.KeyID() {
		t.Fatalf("hex seed: %v %v", err, s2)
	}
	for _, bad := range []string{"", "short", strings.Repeat("z", 64)} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
}
