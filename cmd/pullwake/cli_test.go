package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/testbin"
	"github.com/pullwake/pullwake/internal/testdb"
)

// The CLI tests run the built binary, as an operator would, against a
// database of their own.

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// binary builds cmd/pullwake once per test process.
func binary(t *testing.T) string {
	t.Helper()
	return testbin.Pullwake(t)
}

type result struct {
	stdout, stderr string
	code           int
}

// pullwake runs the binary with args and env (on top of an environment
// cleared of pullwake's and libpq's settings).
func pullwake(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), args...)
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k == "DATABASE_URL" || strings.HasPrefix(k, "PULLWAKE_") || strings.HasPrefix(k, "PG") {
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{stdout: stdout.String(), stderr: stderr.String()}
	var exitErr *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exitErr):
		r.code = exitErr.ExitCode()
	default:
		t.Fatalf("run pullwake %v: %v", args, err)
	}
	return r
}

// expect checks the exit code and that stdout and stderr match the
// patterns (regular expressions; "" matches anything).
func (r result) expect(t *testing.T, code int, stdout, stderr string) {
	t.Helper()
	if r.code != code {
		t.Errorf("exit code %d, want %d", r.code, code)
	}
	if stdout != "" && !regexp.MustCompile(stdout).MatchString(r.stdout) {
		t.Errorf("stdout does not match %q", stdout)
	}
	if stderr != "" && !regexp.MustCompile(stderr).MatchString(r.stderr) {
		t.Errorf("stderr does not match %q", stderr)
	}
	if t.Failed() {
		t.Logf("stdout:\n%s\nstderr:\n%s", r.stdout, r.stderr)
	}
}

// claim is a claim the setup made.
type claim struct {
	consumer string
	epoch    int64
}

// setup returns a fresh database with runner r1 and entity /chat/1 that has
// one message sent and an active claim by r1 with a live lease.
func setup(t *testing.T) (*testdb.DB, claim) {
	t.Helper()
	tdb := testdb.New(t)
	exec1(t, tdb, `INSERT INTO runners (id, token_hash) VALUES ('r1', '\x00')`)
	exec1(t, tdb, `SELECT * FROM spawn_entity('/chat/1')`)
	exec1(t, tdb, `SELECT * FROM send_to_entity('/chat/1', '{"text": "hi"}')`)
	return tdb, claimNext(t, tdb, `SELECT consumer_id, epoch FROM claim_next_wake('r1', 30000)`)
}

func exec1(t *testing.T, tdb *testdb.DB, sql string) {
	t.Helper()
	if _, err := tdb.Pool.Exec(context.Background(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func claimNext(t *testing.T, tdb *testdb.DB, sql string) claim {
	t.Helper()
	var c claim
	if err := tdb.Pool.QueryRow(context.Background(), sql).Scan(&c.consumer, &c.epoch); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return c
}

func claimStatus(t *testing.T, tdb *testdb.DB, c claim) string {
	t.Helper()
	var s string
	err := tdb.Pool.QueryRow(context.Background(),
		`SELECT status FROM consumer_claims WHERE consumer_id = $1 AND epoch = $2`, c.consumer, c.epoch).Scan(&s)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestVersion runs the command in process: the binary's build (shared by
// the other CLI tests) is not what it tests. make build stamps the version
// (-ldflags -X main.version=...); TestVersionStamp checks that path.
func TestVersion(t *testing.T) {
	t.Parallel()
	var stdout, stderr bytes.Buffer
	code := run([]string{"version"}, &stdout, &stderr)
	r := result{stdout: stdout.String(), stderr: stderr.String(), code: code}
	r.expect(t, 0, `^pullwake \S+\n$`, `^$`)
}

// The test binary is built with a stamped version (internal/testbin), as
// make build stamps git describe: pullwake version prints it.
func TestVersionStamp(t *testing.T) {
	t.Parallel()
	pullwake(t, nil, "version").expect(t, 0, `^pullwake `+regexp.QuoteMeta(testbin.Version)+`\n$`, `^$`)
}

// A listen address in use is a clear error naming the way out, not a
// server that seems to start.
func TestServePortInUse(t *testing.T) {
	t.Parallel()
	tdb := testdb.New(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r := pullwake(t, []string{"PULLWAKE_DATABASE_URL=" + tdb.URL, "PULLWAKE_LOG_FORMAT=text"}, "serve", "--addr", ln.Addr().String())
	r.expect(t, 1, "", `pullwake serve: listen on `+regexp.QuoteMeta(ln.Addr().String())+`: the address is already in use .*--addr or PULLWAKE_ADDR\n\z`)
	if strings.Contains(r.stderr, "pullwake serving") {
		t.Errorf("said serving on a port it could not bind:\n%s", r.stderr)
	}
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"release", "claims", "sweep", "migrate", "version"} {
		t.Run(cmd, func(t *testing.T) {
			t.Parallel()
			r := pullwake(t, nil, cmd, "--help")
			if r.code != 0 {
				t.Fatalf("exit code %d, want 0\n%s%s", r.code, r.stdout, r.stderr)
			}
			if !strings.Contains(r.stdout+r.stderr, "Usage: pullwake "+cmd) {
				t.Errorf("no usage text:\n%s%s", r.stdout, r.stderr)
			}
		})
	}
	t.Run("operator commands list their flags on stdout", func(t *testing.T) {
		t.Parallel()
		pullwake(t, nil, "release", "-h").expect(t, 0, `(?s)release CONSUMER EPOCH.*-acks.*-database-url.*-json.*-tenant`, `^$`)
		pullwake(t, nil, "claims", "--help").expect(t, 0, `(?s)-entity.*-json.*-limit.*-runner.*-status`, `^$`)
		pullwake(t, nil, "sweep", "--help").expect(t, 0, `(?s)-limit.*-now`, `^$`)
	})
	t.Run("top level", func(t *testing.T) {
		t.Parallel()
		pullwake(t, nil, "--help").expect(t, 0, `(?s)Commands:.*release.*claims.*sweep`, "")
		pullwake(t, nil).expect(t, 2, `Commands:`, "")
		pullwake(t, nil, "frobnicate").expect(t, 2, "", `unknown command "frobnicate"`)
	})
}

func TestMigrateStatus(t *testing.T) {
	t.Parallel()
	tdb := testdb.New(t)
	r := pullwake(t, nil, "migrate", "status", "--database-url", tdb.URL)
	r.expect(t, 0, `(?m)^VERSION\s+STATE`, "")
	if strings.Contains(r.stdout, "pending") || !regexp.MustCompile(`(?m)^00001\s+applied`).MatchString(r.stdout) {
		t.Errorf("want every migration applied:\n%s", r.stdout)
	}
	pullwake(t, nil, "migrate", "sideways", "--database-url", tdb.URL).expect(t, 2, "", `unknown action "sideways"`)
}

func TestRelease(t *testing.T) {
	t.Parallel()
	tdb, c := setup(t)
	epoch := fmt.Sprint(c.epoch)

	// The database comes from the environment here; the flag elsewhere.
	env := []string{"PULLWAKE_DATABASE_URL=" + tdb.URL}
	pullwake(t, env, "release", c.consumer, epoch, "--acks", `[{"stream": "/v1/stream/chat/1/main", "offset": "0000000000000001"}]`).
		expect(t, 0, `(?m)\Areleased: true
entity_cleared: true
claim_status: released
entity_url: /chat/1
stream_path: /v1/stream/chat/1/main
entity_status: idle
acked_offset: 0000000000000001
\z`, `^$`)
	if s := claimStatus(t, tdb, c); s != "released" {
		t.Errorf("claim status %q, want released", s)
	}

	// A repeated release is a no-op and says so; --json for scripts.
	r := pullwake(t, nil, "release", "--json", c.consumer, epoch, "--database-url", tdb.URL)
	r.expect(t, 0, "", `^$`)
	var got releaseResult
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
		t.Fatalf("--json output: %v\n%s", err, r.stdout)
	}
	want := releaseResult{Released: false, EntityCleared: false, ClaimStatus: "released", EntityURL: "/chat/1",
		StreamPath: "/v1/stream/chat/1/main", EntityStatus: "idle", AckedOffset: "0000000000000001"}
	if got != want {
		t.Errorf("--json = %+v, want %+v", got, want)
	}
}

func TestReleaseQueuesWakeForUnackedMessage(t *testing.T) {
	t.Parallel()
	tdb, c := setup(t)
	// Released without an ack: the sent message is not covered, so a wake is queued.
	pullwake(t, nil, "release", c.consumer, fmt.Sprint(c.epoch), "--database-url", tdb.URL).
		expect(t, 0, `(?m)^entity_cleared: true$[\s\S]*^queued_wake_id: wake-\d+$`, `^$`)
}

func TestReleaseBadArguments(t *testing.T) {
	t.Parallel()
	tdb, c := setup(t)
	url := "--database-url=" + tdb.URL
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"non-numeric epoch", []string{c.consumer, "four", url}, 2, `pullwake release: usage: EPOCH must be a positive integer, got "four"`},
		{"zero epoch", []string{c.consumer, "0", url}, 2, `EPOCH must be a positive integer`},
		{"signed epoch", []string{c.consumer, "+1", url}, 2, `EPOCH must be a positive integer, got "\+1"`},
		{"missing epoch", []string{c.consumer, url}, 2, `want CONSUMER EPOCH, got 1 argument\(s\)`},
		{"too many arguments", []string{c.consumer, "1", "2", url}, 2, `want CONSUMER EPOCH, got 3 argument\(s\)`},
		{"unknown flag", []string{c.consumer, "1", "--force", url}, 2, `flag provided but not defined: -force`},
		{"acks not JSON", []string{c.consumer, "1", "--acks", "{oops", url}, 2, `--acks must be a JSON array`},
		{"acks bad offset", []string{c.consumer, "1", "--acks", `[{"stream":"/chat/1/main","offset":"x"}]`, url}, 2, `--acks: invalid offset 'x'`},
		{"unknown consumer", []string{"wake-999999", "1", url}, 1, `^pullwake release: claim wake-999999/1 not found \(tenant default\)\n$`},
		{"unknown epoch", []string{c.consumer, "7", url}, 1, `claim ` + c.consumer + `/7 not found`},
		{"other tenant", []string{c.consumer, "1", url, "--tenant", "other"}, 1, `not found \(tenant other\)`},
		{"no database", []string{c.consumer, "1"}, 2, `no database: set --database-url`},
		{"unreachable database", []string{c.consumer, "1", "--database-url", "postgres://nobody@127.0.0.1:1/x?connect_timeout=2"}, 1, `connect to database`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pullwake(t, nil, append([]string{"release"}, tc.args...)...).expect(t, tc.code, `^$`, tc.stderr)
		})
	}
	// None of that touched the claim.
	t.Cleanup(func() {
		if s := claimStatus(t, tdb, c); s != "active" {
			t.Errorf("claim status %q after bad releases, want active", s)
		}
	})
}

// An epoch older than the entity's newest claim is superseded, and a
// refused ack is a usage error; both print the message without its SQLSTATE.
func TestReleaseSupersededAndRefusedAck(t *testing.T) {
	t.Parallel()
	tdb, c := setup(t)
	url := "--database-url=" + tdb.URL
	// The first claim ends without an ack: its message is queued again and
	// a second claim (epoch 2) takes it.
	pullwake(t, nil, "release", c.consumer, fmt.Sprint(c.epoch), url).expect(t, 0, `(?m)^queued_wake_id: wake-\d+$`, `^$`)
	c2 := claimNext(t, tdb, `SELECT consumer_id, epoch FROM claim_next_wake('r1', 30000)`)
	if c2.epoch != 2 {
		t.Fatalf("second claim %+v", c2)
	}
	pullwake(t, nil, "release", c2.consumer, "1", url).
		expect(t, 1, `^$`, `^pullwake release: claim `+c2.consumer+`/1 is superseded: the newest claim of /chat/1 has epoch 2 \(tenant default\)\n$`)
	pullwake(t, nil, "release", c2.consumer, "2", "--acks", `[{"stream": "/chat/1/main", "offset": "0000000000000002"}]`, url).
		expect(t, 2, `^$`, `--acks: offset 0000000000000002 is beyond the tail 0000000000000001 of /v1/stream/chat/1/main \(acks\[0\]\)`)
	if s := claimStatus(t, tdb, c2); s != "active" {
		t.Errorf("claim status %q after refused releases, want active", s)
	}
}

func TestClaims(t *testing.T) {
	t.Parallel()
	tdb, c := setup(t)
	url := "--database-url=" + tdb.URL
	// A second entity whose claim is released, by another runner.
	exec1(t, tdb, `INSERT INTO runners (id, token_hash) VALUES ('r2', '\x00')`)
	exec1(t, tdb, `SELECT * FROM spawn_entity('/chat/2')`)
	exec1(t, tdb, `SELECT * FROM send_to_entity('/chat/2', '"hi"')`)
	done := claimNext(t, tdb, `SELECT consumer_id, epoch FROM claim_next_wake('r2', 30000)`)
	exec1(t, tdb, fmt.Sprintf(`SELECT * FROM release_claim('%s', %d)`, done.consumer, done.epoch))

	t.Run("table", func(t *testing.T) {
		t.Parallel()
		r := pullwake(t, nil, "claims", url)
		r.expect(t, 0, `^CONSUMER\s+EPOCH\s+STATUS\s+ENTITY\s+RUNNER\s+CLAIMED AT\s+LEASE EXPIRES\s+RELEASED AT\n`, `^$`)
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		if len(lines) != 3 {
			t.Fatalf("want a header and 2 rows:\n%s", r.stdout)
		}
		// Aligned: every row's STATUS column starts where the header's does.
		col := strings.Index(lines[0], "STATUS")
		for _, l := range lines[1:] {
			if l[col-1] != ' ' || l[col] == ' ' {
				t.Errorf("row not aligned with header:\n%s\n%s", lines[0], l)
			}
		}
		if !regexp.MustCompile(`(?m)^` + c.consumer + `\s+1\s+active\s+/chat/1\s+r1\s+\S+Z\s+\S+Z\s+-$`).MatchString(r.stdout) {
			t.Errorf("active claim row missing:\n%s", r.stdout)
		}
	})
	t.Run("filters", func(t *testing.T) {
		t.Parallel()
		r := pullwake(t, nil, "claims", url, "--status", "released")
		r.expect(t, 0, `(?m)^`+done.consumer+`\s+1\s+released\s+/chat/2\s+r2\s`, `^$`)
		if strings.Contains(r.stdout, c.consumer+" ") {
			t.Errorf("--status released lists the active claim:\n%s", r.stdout)
		}
		r = pullwake(t, nil, "claims", url, "--runner", "r1", "--entity", "/chat/1")
		if n := strings.Count(r.stdout, "\n"); r.code != 0 || n != 2 {
			t.Errorf("--runner r1 --entity /chat/1: exit %d, %d lines, want 0 and 2:\n%s%s", r.code, n, r.stdout, r.stderr)
		}
		pullwake(t, nil, "claims", url, "--status", "failed").expect(t, 0, `^CONSUMER.*\n$`, `^$`)
	})
	t.Run("json", func(t *testing.T) {
		t.Parallel()
		r := pullwake(t, nil, "claims", url, "--json", "--runner", "r1")
		r.expect(t, 0, "", `^$`)
		var got []claimJSON
		if err := json.Unmarshal([]byte(r.stdout), &got); err != nil {
			t.Fatalf("--json: %v\n%s", err, r.stdout)
		}
		if len(got) != 1 || got[0].ConsumerID != c.consumer || got[0].Epoch != c.epoch || got[0].Status != "active" ||
			got[0].EntityURL != "/chat/1" || got[0].LeaseExpiresAt == nil || got[0].ReleasedAt != nil {
			t.Errorf("--json = %+v", got)
		}
		pullwake(t, nil, "claims", url, "--json", "--status", "expired").expect(t, 0, `^\[\]\n$`, `^$`)
	})
	t.Run("limit", func(t *testing.T) {
		t.Parallel()
		r := pullwake(t, nil, "claims", url, "--limit", "1")
		r.expect(t, 0, "", `showing the newest 1 claims`)
		if n := strings.Count(r.stdout, "\n"); n != 2 {
			t.Errorf("--limit 1 printed %d lines:\n%s", n, r.stdout)
		}
	})
	t.Run("bad arguments", func(t *testing.T) {
		t.Parallel()
		pullwake(t, nil, "claims", url, "--status", "bogus").
			expect(t, 2, `^$`, `pullwake claims: usage: --status "bogus": want active, released, expired or failed`)
		pullwake(t, nil, "claims", url, "--limit", "0").expect(t, 2, `^$`, `--limit 0: want 1 to 10000`)
		pullwake(t, nil, "claims", url, "--limit", "many").expect(t, 2, `^$`, `invalid value "many" for flag -limit`)
		pullwake(t, nil, "claims", url, "active").expect(t, 2, `^$`, `unexpected argument "active"`)
	})
}

func TestSweep(t *testing.T) {
	t.Parallel()
	tdb, live := setup(t)
	url := "--database-url=" + tdb.URL
	// A second entity whose claim was taken an hour ago with a 1 s lease.
	exec1(t, tdb, `SELECT * FROM spawn_entity('/chat/2')`)
	exec1(t, tdb, `SELECT * FROM send_to_entity('/chat/2', '"hi"', NULL, now() - interval '1 hour')`)
	lapsed := claimNext(t, tdb, `SELECT consumer_id, epoch FROM claim_next_wake('r1', 1000, now() - interval '1 hour')`)

	// The sent message was never acked: the freed entity gets a new wake.
	pullwake(t, nil, "sweep", url).expect(t, 0,
		`\Aexpired `+lapsed.consumer+`/1 entity_url=/chat/2 entity_cleared=true entity_status=idle queued_wake_id=wake-\d+\nsweep: expired 1 claim\(s\)\n\z`, `^$`)
	if s := claimStatus(t, tdb, lapsed); s != "expired" {
		t.Errorf("lapsed claim %q, want expired", s)
	}
	if s := claimStatus(t, tdb, live); s != "active" {
		t.Errorf("live claim %q, want active", s)
	}
	pullwake(t, nil, "sweep", url).expect(t, 0, `\Asweep: expired 0 claim\(s\)\n\z`, `^$`)

	// --now pins the clock: an hour from now the live claim's lease has passed.
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	pullwake(t, nil, "sweep", url, "--now", future).expect(t, 0, `(?m)^expired `+live.consumer+`/1 entity_url=/chat/1 .*\nsweep: expired 1 claim\(s\)\n\z`, `^$`)

	pullwake(t, nil, "sweep", url, "--now", "tomorrow").expect(t, 2, `^$`, `--now "tomorrow" is not an RFC 3339 time`)
	pullwake(t, nil, "sweep", url, "--limit", "-1").expect(t, 2, `^$`, `--limit -1`)
	pullwake(t, nil, "sweep").expect(t, 2, `^$`, `no database`)
}

// An operator's release reaches every server: it notifies pullwake_claims.
func TestReleaseNotifiesServers(t *testing.T) {
	t.Parallel()
	tdb, c := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := tdb.Pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "LISTEN pullwake_claims"); err != nil {
		t.Fatal(err)
	}
	pullwake(t, nil, "release", c.consumer, fmt.Sprint(c.epoch), "--database-url", tdb.URL).expect(t, 0, `released: true`, `^$`)
	n, err := conn.Conn().WaitForNotification(ctx)
	if err != nil {
		t.Fatalf("no notification after pullwake release: %v", err)
	}
	var got struct {
		ConsumerID string `json:"consumer_id"`
		Epoch      int64  `json:"epoch"`
		Status     string `json:"status"`
	}
	if err := json.Unmarshal([]byte(n.Payload), &got); err != nil || got.ConsumerID != c.consumer || got.Epoch != c.epoch || got.Status != "released" {
		t.Fatalf("notification %s (%v)", n.Payload, err)
	}
}
