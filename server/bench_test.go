package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// Handler benchmarks: the server's own cost per request, called in process
// (no network), each request with its one database round trip. Profile:
//   go test ./server -run '^$' -bench . -benchmem -cpuprofile cpu.out

type benchClaim struct {
	consumer, stream, claimToken string
	epoch                        int64
}

// benchClaims spawns n entities with one message each and claims them all
// through SQL, minting their write tokens as the claim route would.
func benchClaims(b *testing.B, bb *bundle, n int) []benchClaim {
	b.Helper()
	ctx := context.Background()
	for _, q := range []string{
		`INSERT INTO runners (id, token_hash) VALUES ('r1', '\x00')`,
		fmt.Sprintf(`SELECT spawn_entity('/bench/' || i) FROM generate_series(1, %d) i`, n),
		fmt.Sprintf(`SELECT send_to_entity('/bench/' || i, '"hi"') FROM generate_series(1, %d) i`, n),
		`ANALYZE`,
	} {
		if _, err := bb.db.Pool.Exec(ctx, q); err != nil {
			b.Fatal(err)
		}
	}
	out := make([]benchClaim, 0, n)
	for range n {
		var c benchClaim
		err := bb.db.Pool.QueryRow(ctx, `SELECT consumer_id, epoch, stream_path, claim_token FROM claim_next_wake('r1', 600000)`).
			Scan(&c.consumer, &c.epoch, &c.stream, &c.claimToken)
		if err != nil {
			b.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

func serve(b *testing.B, h http.Handler, method, path, token string, body []byte, want int) {
	req := httptest.NewRequest(method, path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != want {
		b.Fatalf("%s %s: %d %s", method, path, rec.Code, rec.Body)
	}
}

// BenchmarkAppendHandler: one 1 KiB JSON append to an entity's main stream
// with its write token (token check in memory, then pw_stream_write).
func BenchmarkAppendHandler(b *testing.B) {
	bb := setup(b, func(o *options) { o.singleCalls = true }) // serve's default
	c := benchClaims(b, bb, 1)[0]
	tok := bb.srv.Tokens().Mint(c.stream, tokensOwner(c.consumer, c.epoch), "claim-token")
	msg, _ := json.Marshal(map[string]string{"text": strings.Repeat("x", 1000)})
	h := bb.srv.Handler()
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		serve(b, h, "POST", c.stream, tok, msg, http.StatusNoContent)
	}
}

// BenchmarkDoneHandler: a done with an ack (release_claim with the claim
// token's hash, then the token-store step).
func BenchmarkDoneHandler(b *testing.B) {
	bb := setup(b, func(o *options) { o.singleCalls = true }) // serve's default
	claims := benchClaims(b, bb, b.N)
	h := bb.srv.Handler()
	bodies := make([][]byte, len(claims))
	for i, c := range claims {
		bodies[i], _ = json.Marshal(map[string]any{"epoch": c.epoch, "done": true,
			"acks": []any{map[string]any{"stream": c.stream, "offset": "0000000000000001"}}})
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c := claims[i]
		serve(b, h, "POST", "/_electric/wake-callbacks/"+c.consumer, c.claimToken, bodies[i], http.StatusOK)
	}
}
