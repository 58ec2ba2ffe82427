package secret

import (
	"strings"
	"testing"
)

func TestNewIsRandomAndLongEnough(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 1000 {
		tok := New()
		if len(tok) != 32 {
			t.Fatalf("token %q has %d chars, want 32 (192 bits)", tok, len(tok))
		}
		if seen[tok] {
			t.Fatalf("token %q repeated", tok)
		}
		seen[tok] = true
	}
}

func TestHashAndMatch(t *testing.T) {
	t.Parallel()
	tok := New()
	h := Hash(tok)
	if len(h) != 32 || !MatchesHash(tok, h) || MatchesHash(tok+"x", h) || MatchesHash("", h) {
		t.Fatal("hash/match disagree")
	}
}

func TestEqual(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		a, b string
		want bool
	}{{"abc", "abc", true}, {"abc", "abd", false}, {"abc", "ab", false}, {"", "", true}, {"a", "", false}} {
		if got := Equal(c.a, c.b); got != c.want {
			t.Errorf("Equal(%q, %q) = %v", c.a, c.b, got)
		}
	}
}

// Equal compares eight bytes a step: a difference in any byte of a long
// token, and in any bit of it, is found.
func TestEqualEveryByteAndBit(t *testing.T) {
	t.Parallel()
	a := strings.Repeat("pw1.d2FrZS0x.1.0123456789abcdef", 4)[:123]
	if !Equal(a, strings.Clone(a)) {
		t.Fatal("equal strings differ")
	}
	for i := range len(a) {
		for bit := range 8 {
			b := []byte(a)
			b[i] ^= 1 << bit
			if Equal(a, string(b)) {
				t.Fatalf("byte %d bit %d changed, still equal", i, bit)
			}
		}
	}
}

func TestBearer(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"Bearer abc": "abc", "bearer abc": "abc", "Bearer  abc ": "abc",
		"Basic abc": "", "Bearer": "", "": "", "abc": "",
	} {
		if got := Bearer(in); got != want {
			t.Errorf("Bearer(%q) = %q, want %q", in, got, want)
		}
	}
}
