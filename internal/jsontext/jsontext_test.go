package jsontext

import (
	"strings"
	"testing"
)

func TestCheck(t *testing.T) {
	t.Parallel()
	ok := []string{
		`{}`, `{"a":"b","c":[1,-2.5e10,0,1e-400,"x\"\\u0000"]}`, `"\ud83d\ude00"`, `"é \u00e9"`,
		`123456789012345678901234567890`, `{"k":"\\"}`, `[true,false,null]`, `-0`, `1E+300`,
	}
	for _, s := range ok {
		if msg := Check([]byte(s)); msg != "" {
			t.Errorf("Check(%s) = %q, want ok", s, msg)
		}
	}
	bad := []string{
		`{"a":"\u0000"}`, `{"\u0000":1}`, `"\ud800"`, `"\ud800x"`, `"\udc00"`, `"\ud800\u0041"`,
		"\"\xff\"", `1e1000000`, `1e-1000000`, `0e-99999`, `[1e309]`, `{"n":-1e400}`,
		`"` + string([]byte{0xed, 0xa0, 0x80}) + `"`, // a surrogate encoded as UTF-8
	}
	for _, s := range bad {
		if msg := Check([]byte(s)); msg == "" {
			t.Errorf("Check(%q) = ok, want a refusal", s)
		}
	}
	deep := strings.Repeat("[", MaxDepth+1) + strings.Repeat("]", MaxDepth+1)
	if Check([]byte(deep)) == "" {
		t.Error("nesting of 513 levels passed")
	}
	if msg := Check([]byte(strings.Repeat("[", MaxDepth) + strings.Repeat("]", MaxDepth))); msg != "" {
		t.Errorf("nesting of 512 levels: %s", msg)
	}
	if msg := Check([]byte(`{"a": "[[[[{{{{"}`)); msg != "" {
		t.Errorf("brackets in a string: %s", msg)
	}
	long := make([]byte, MaxNumberLen+1)
	for i := range long {
		long[i] = '1'
	}
	if Check(long) == "" {
		t.Error("a number of 513 digits passed")
	}
}

func TestCheckText(t *testing.T) {
	t.Parallel()
	for s, want := range map[string]bool{"/chat/42": true, "é": true, "a\x00b": false, "\xff": false, "": true} {
		if got := CheckText(s) == ""; got != want {
			t.Errorf("CheckText(%q) ok = %v, want %v", s, got, want)
		}
	}
}
