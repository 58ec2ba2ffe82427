package streams

import (
	"bytes"
	"encoding/json"
)

// Event offsets on entity streams. Electric's runner runtime reads an
// entity's main stream from the start at every wake and places each State
// Protocol event against the claim's offset (the notification's
// streams[].offset, the acked offset) by the event's headers.offset; an
// event without one counts as new. So a runtime whose entity had a second
// session was handed the whole history and answered old messages again.
// A State Protocol event (an object whose headers carry a string
// operation or control) read from an entity stream therefore carries
// headers.offset, as Electric's stream server writes it: the event's own
// offset, the stream's offset just after it (what an append of it
// answered; reading from it returns the events after it). The events a
// claim acked have offsets up to the acked offset, the ones sent since
// beyond it. Other events, and every event of a plain stream, are
// returned as they were appended.

var headersKey = []byte(`"headers"`)

// withEventOffsets sets headers.offset on the State Protocol events of
// msgs, the JSON-mode messages read after seq after (message i is seq
// after+i+1: a stream's seqs have no gaps).
func withEventOffsets(msgs [][]byte, after int64) [][]byte {
	var out [][]byte // a copy, made at the first change: the chunk may be shared by readers
	for i, m := range msgs {
		if !bytes.Contains(m, headersKey) {
			continue
		}
		e, ok := withEventOffset(m, offset(after+int64(i)+1))
		if !ok {
			continue
		}
		if out == nil {
			out = append([][]byte(nil), msgs...)
		}
		out[i] = e
	}
	if out == nil {
		return msgs
	}
	return out
}

// withEventOffset returns m with headers.offset set to at, when m is a
// State Protocol event. The offset is written into the headers object in
// place (the event's other bytes are kept as appended); an offset the
// writer put there is replaced.
func withEventOffset(m []byte, at string) ([]byte, bool) {
	dec := json.NewDecoder(bytes.NewReader(m))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, false
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, false
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, false
		}
		if tok != "headers" {
			continue
		}
		var hd map[string]json.RawMessage
		if json.Unmarshal(raw, &hd) != nil || hd == nil {
			return nil, false
		}
		if !isJSONString(hd["operation"]) && !isJSONString(hd["control"]) {
			return nil, false
		}
		end := int(dec.InputOffset()) // just past the headers object
		start := end - len(raw)
		if start < 0 || m[end-1] != '}' {
			return nil, false
		}
		field := `"offset": "` + at + `"`
		var obj []byte
		if _, had := hd["offset"]; had {
			hd["offset"] = json.RawMessage(`"` + at + `"`)
			if obj, err = marshalRaw(hd); err != nil {
				return nil, false
			}
		} else {
			sep := ", "
			if len(hd) == 0 {
				sep = ""
			}
			obj = append(append(append([]byte(nil), raw[:len(raw)-1]...), sep+field...), '}')
		}
		out := make([]byte, 0, len(m)-len(raw)+len(obj))
		return append(append(append(out, m[:start]...), obj...), m[end:]...), true
	}
	return nil, false
}

func isJSONString(v json.RawMessage) bool {
	v = bytes.TrimSpace(v)
	return len(v) > 0 && v[0] == '"'
}

// marshalRaw encodes without escaping <, > and &.
func marshalRaw(v map[string]json.RawMessage) (json.RawMessage, error) {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimRight(b.Bytes(), "\n"), nil
}
