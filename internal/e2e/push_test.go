package e2e

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/testdb"
	"github.com/pullwake/pullwake/internal/webhooksig"
)

// Push delivery through the real binary: two instances share one database
// and one signing key (PULLWAKE_WEBHOOK_SIGNING_KEY); a subscription made
// on one is served by the instances' workers; each delivery's signature
// verifies with the key set of the other instance; the endpoint answers a
// 500 first (the message is delivered again later, once), then
// {"done": true}, and every message ends acked with no claim left active.
func TestPushDeliveryBinary(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	env := []string{"PULLWAKE_WEBHOOK_SIGNING_KEY=" + strings.Repeat("5a", 32), "PULLWAKE_PUSH_POLL_INTERVAL=50ms"}
	a := startServer(t, serverConfig{DatabaseURL: d.URL, Env: env})
	b := startServer(t, serverConfig{DatabaseURL: d.URL, Env: env})

	res, err := http.Get(b.URL() + "/__ds/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	var set webhooksig.JWKS
	if err := json.NewDecoder(res.Body).Decode(&set); err != nil {
		t.Fatal(err)
	}
	res.Body.Close()

	var mu sync.Mutex
	var calls []string // entity_url of each delivery, "bad" for a signature that fails
	ep := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var n struct {
			EntityURL string `json:"entity_url"`
		}
		_ = json.Unmarshal(body, &n)
		if err := webhooksig.Verify(body, r.Header.Get("Webhook-Signature"), set, time.Now(), 5*time.Minute); err != nil {
			n.EntityURL = "bad: " + err.Error()
		}
		mu.Lock()
		calls = append(calls, n.EntityURL)
		first := len(calls) == 1
		mu.Unlock()
		if first {
			http.Error(w, "not yet", http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte(`{"done": true}`))
	}))
	t.Cleanup(ep.Close)

	c := a.Client()
	c.must(t, "PUT", "/__ds/subscriptions/jobs", "", map[string]any{"type": "webhook", "pattern": "job/**",
		"webhook": map[string]any{"url": ep.URL}}, http.StatusCreated)
	sent := map[string]string{}
	for _, u := range []string{"/job/1", "/job/2", "/job/3"} {
		c.spawn(t, u)
		sent[u] = c.send(t, u, map[string]any{"n": u})
	}
	eventually(t, 20*time.Second, 20*time.Millisecond, "every job acked", func() (bool, string) {
		for u, off := range sent {
			e := c.entity(t, u)
			if e.Status != "idle" || e.Dispatch.AckedOffset != off {
				return false, u + " is " + e.Status + " acked at " + e.Dispatch.AckedOffset
			}
		}
		return true, ""
	})
	mu.Lock()
	defer mu.Unlock()
	seen := map[string]int{}
	for _, u := range calls {
		seen[u]++
	}
	// One failed delivery plus one successful per job.
	if len(calls) != 4 || seen["/job/1"]+seen["/job/2"]+seen["/job/3"] != 4 {
		t.Fatalf("deliveries %v", calls)
	}
	if active := c.claims(t, "status=active"); len(active) != 0 {
		t.Fatalf("active claims left: %+v", active)
	}
}
