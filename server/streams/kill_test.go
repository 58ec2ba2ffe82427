package streams

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/testbin"
	"github.com/pullwake/pullwake/internal/testdb"
)

// TestKillMidRunExactlyOnce runs the real binary (go build ./cmd/pullwake,
// `pullwake serve`), appends from 4 idempotent producers, SIGKILLs the server
// mid-run, restarts it on the same database and port, and has the writers
// retry whatever got no answer with the same producer headers. Every message
// must be in the stream exactly once, in each writer's order.
func TestKillMidRunExactlyOnce(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the pullwake binary")
	}
	t.Parallel()
	bin := testbin.Pullwake(t)
	d := testdb.New(t)
	addr := freeAddr(t)
	base := "http://" + addr

	start := func() *exec.Cmd {
		cmd := exec.Command(bin, "serve")
		cmd.Env = append(os.Environ(), "PULLWAKE_DATABASE_URL="+d.URL, "PULLWAKE_ADDR="+addr,
			"PULLWAKE_ADMIN_TOKEN=", "PULLWAKE_LOG_LEVEL=error", "PULLWAKE_LONG_POLL_TIMEOUT=1s")
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "pullwake serve to answer", func() bool {
			res, err := http.Get(base + "/healthz")
			if err == nil {
				res.Body.Close()
			}
			return err == nil && res.StatusCode == 200
		})
		return cmd
	}
	srv := start()
	t.Cleanup(func() { _ = srv.Process.Kill(); _ = srv.Wait() })

	p := "/v1/stream/kill-test"
	put, _ := http.NewRequest("PUT", base+p, nil)
	put.Header.Set("Content-Type", jsonCT)
	if res, err := http.DefaultClient.Do(put); err != nil || res.StatusCode != 201 {
		t.Fatalf("create: %v %v", res, err)
	}

	const writers, perWriter = 4, 100
	var ok, retries atomic.Int64
	client := &http.Client{Timeout: 5 * time.Second}
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := range perWriter {
				deadline := time.Now().Add(30 * time.Second)
				for {
					req, _ := http.NewRequest("POST", base+p, strings.NewReader(fmt.Sprintf(`{"w":%d,"n":%d}`, w, n)))
					req.Header.Set("Content-Type", jsonCT)
					req.Header.Set("Producer-Id", fmt.Sprintf("writer-%d", w))
					req.Header.Set("Producer-Epoch", "0")
					req.Header.Set("Producer-Seq", fmt.Sprint(n))
					res, err := client.Do(req)
					if err == nil {
						res.Body.Close()
						if res.StatusCode == 200 || res.StatusCode == 204 {
							ok.Add(1)
							break
						}
						if res.StatusCode < 500 {
							errs <- fmt.Errorf("writer %d seq %d: status %d", w, n, res.StatusCode)
							return
						}
					}
					if time.Now().After(deadline) {
						errs <- fmt.Errorf("writer %d seq %d: no success before the deadline: %v", w, n, err)
						return
					}
					retries.Add(1)
					time.Sleep(10 * time.Millisecond) // back off while the server restarts
				}
			}
		}()
	}

	waitFor(t, "a quarter of the appends", func() bool { return ok.Load() >= writers*perWriter/4 })
	if err := srv.Process.Signal(os.Kill); err != nil {
		t.Fatal(err)
	}
	_ = srv.Wait()
	killedAt := ok.Load()
	srv = start()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	t.Logf("killed after %d of %d appends; %d retries", killedAt, writers*perWriter, retries.Load())
	if killedAt >= writers*perWriter {
		t.Fatalf("the kill landed after the run")
	}

	var all []struct{ W, N int }
	off := "-1"
	for {
		res, err := http.Get(base + p + "?offset=" + off)
		if err != nil {
			t.Fatal(err)
		}
		var chunk []struct{ W, N int }
		err = json.NewDecoder(res.Body).Decode(&chunk)
		res.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, chunk...)
		off = res.Header.Get("Stream-Next-Offset")
		if res.Header.Get("Stream-Up-To-Date") == "true" {
			break
		}
	}
	if len(all) != writers*perWriter {
		t.Errorf("stream holds %d messages, want %d", len(all), writers*perWriter)
	}
	next := make([]int, writers)
	for i, m := range all {
		if m.W < 0 || m.W >= writers || m.N != next[m.W] {
			t.Fatalf("message %d is %+v; writer %d expected n=%d (duplicate, gap or reorder)", i, m, m.W, next[min(max(m.W, 0), writers-1)])
		}
		next[m.W]++
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
