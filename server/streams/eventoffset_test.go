package streams

import (
	"bytes"
	"encoding/json"
	"testing"
)

// A State Protocol event (headers with a string operation or control)
// gets headers.offset, its own offset (the stream's just after it); every other message
// is returned byte for byte, and the read's own slice is left alone.
func TestWithEventOffsets(t *testing.T) {
	t.Parallel()
	msgs := [][]byte{
		[]byte(`{"type":"inbox","key":"k1","value":{"text":"<a&b>"},"headers":{"operation":"insert","txid":"7"}}`),
		[]byte(`{"type":"x","headers":{"foo":"bar"}}`),
		[]byte(`{"headers":{"control":"snapshot-start"}}`),
		[]byte(`{"headers":{"operation":1}}`),
		[]byte(`"headers"`),
		[]byte(`[{"headers":{"operation":"insert"}}]`),
		[]byte(`{"headers":{"operation":"update","offset":"stale"}}`),
	}
	orig := make([][]byte, len(msgs))
	for i, m := range msgs {
		orig[i] = append([]byte(nil), m...)
	}
	out := withEventOffsets(msgs, 41)
	for i := range msgs {
		if !bytes.Equal(msgs[i], orig[i]) {
			t.Fatalf("the read's message %d changed: %s", i, msgs[i])
		}
	}
	want := map[int]string{0: "0000000000000042", 2: "0000000000000044", 6: "0000000000000048"}
	for i, m := range out {
		at, enriched := want[i]
		if !enriched {
			if !bytes.Equal(m, orig[i]) {
				t.Errorf("message %d is no State Protocol event but changed: %s", i, m)
			}
			continue
		}
		var ev struct {
			Value   map[string]string `json:"value"`
			Headers map[string]string `json:"headers"`
		}
		if err := json.Unmarshal(m, &ev); err != nil {
			t.Fatalf("message %d: %v: %s", i, err, m)
		}
		if ev.Headers["offset"] != at {
			t.Errorf("message %d: headers.offset %q, want %q: %s", i, ev.Headers["offset"], at, m)
		}
		if i == 0 && (ev.Headers["txid"] != "7" || ev.Headers["operation"] != "insert" || !bytes.Contains(m, []byte(`"<a&b>"`))) {
			t.Errorf("message 0 lost what it carried: %s", m)
		}
	}
	// jsonb's text form, as SQL writes the events: only the offset is added.
	in := `{"key": "sig-1", "type": "signal", "value": {"a": [1, 2]}, "headers": {"operation": "insert", "txid": "9"}}`
	if got, _ := withEventOffset([]byte(in), "0000000000000005"); string(got) !=
		`{"key": "sig-1", "type": "signal", "value": {"a": [1, 2]}, "headers": {"operation": "insert", "txid": "9", "offset": "0000000000000005"}}` {
		t.Errorf("the event's bytes changed beyond the offset: %s", got)
	}
	plain := [][]byte{[]byte(`{"a":1}`)}
	if got := withEventOffsets(plain, 0); &got[0] != &plain[0] {
		t.Error("a read without State Protocol events was copied")
	}
}
