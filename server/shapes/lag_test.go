package shapes_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// BenchmarkLiveLag measures how long a committed change takes to reach a
// live shape reader: from just before the UPDATE is sent (so its commit is
// included) until the answer carrying it is read. long-poll: one request
// per change, issued as a client does right after the previous answer;
// sse: one open event stream. Reports p50 and p99 in ms.
//
//	go test -run '^$' -bench LiveLag -benchtime 500x ./server/shapes/
func BenchmarkLiveLag(b *testing.B) {
	b.Run("long-poll", func(b *testing.B) {
		f := setup(b)
		f.spawn("/lag/1")
		base := q("table", "entities", "where", "url = '/lag/1'")
		a := f.catchUp(base, f.get(with(base, "offset", "-1")))
		lags := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			ch := f.live(next(base, a))
			start := time.Now()
			f.exec(`UPDATE entities SET tags = jsonb_build_object('n', $1::int) WHERE url = '/lag/1'`, i)
			for {
				a = recv(b, ch)
				expectStatus(b, a, http.StatusOK)
				if len(a.changes()) > 0 {
					break
				}
				ch = f.live(next(base, a))
			}
			lags = append(lags, time.Since(start))
		}
		report(b, lags)
	})
	b.Run("sse", func(b *testing.B) {
		f := setup(b)
		f.spawn("/lag/1")
		base := q("table", "entities", "where", "url = '/lag/1'")
		a := f.catchUp(base, f.get(with(base, "offset", "-1")))
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		// SSETimeout is 20 s in the fixture: reconnect when it ends.
		var sc *bufio.Scanner
		var resp *http.Response
		open := func() {
			if resp != nil {
				resp.Body.Close()
			}
			u := f.url + "/v1/shape?" + next(base, a, "live", "true", "live_sse", "true").Encode()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
			var err error
			if resp, err = http.DefaultClient.Do(req); err != nil {
				b.Fatal(err)
			}
			sc = bufio.NewScanner(resp.Body)
		}
		open()
		defer func() { resp.Body.Close() }()
		lags := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			start := time.Now()
			f.exec(`UPDATE entities SET tags = jsonb_build_object('n', $1::int) WHERE url = '/lag/1'`, i)
			want := fmt.Sprintf(`{"n": %d}`, i)
			for {
				if !sc.Scan() {
					open() // the stream ended (its timeout): go on where it was
					continue
				}
				line, ok := strings.CutPrefix(sc.Text(), "data: ")
				if !ok {
					continue
				}
				var m message
				if err := json.Unmarshal([]byte(line), &m); err != nil {
					b.Fatal(err)
				}
				if m.control() == "up-to-date" {
					a.header = http.Header{"Electric-Handle": {a.handle()}, "Electric-Offset": {m.Headers["global_last_seen_lsn"].(string) + "_0"}}
				}
				if m.val("tags") == want {
					break
				}
			}
			lags = append(lags, time.Since(start))
		}
		report(b, lags)
	})
}

func report(b *testing.B, lags []time.Duration) {
	b.StopTimer()
	slices.Sort(lags)
	at := func(p float64) float64 {
		return float64(lags[min(len(lags)-1, int(p*float64(len(lags))))].Microseconds()) / 1000
	}
	b.ReportMetric(at(0.50), "p50-ms")
	b.ReportMetric(at(0.99), "p99-ms")
	b.ReportMetric(0, "ns/op")
}
