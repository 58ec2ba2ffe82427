package bench

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Mode is one way of running the cycle; see the package doc.
type Mode int

const (
	ModeHTTP       Mode = 1
	ModeSQL        Mode = 2
	ModeSQLSplit   Mode = 3
	ModeCommit     Mode = 4
	ModeHTTPNext   Mode = 5
	ModeSQLNext    Mode = 6
	ModeHTTPAppend Mode = 7
	ModeSQLInsert  Mode = 8
	ModeLiveClaims Mode = 9
	ModeSQLBatch   Mode = 10
	ModeLean       Mode = 11
	// The send modes (sendmodes.go).
	ModeSendOneRunner Mode = 12
	ModeSendRunners   Mode = 13
	ModeSendQueued    Mode = 14
	// The cycle behind a backlog: --queued wakes for a runner that never
	// claims, queued (set-based) before the cycle starts.
	ModeHTTPBacklog Mode = 15
	ModeSQLBacklog  Mode = 16
	firstMode            = ModeHTTP
	lastMode             = ModeSQLBacklog
	messageSize          = 1024
	defaultLeaseMs       = 60000
)

func (m Mode) String() string {
	switch m {
	case ModeHTTP:
		return "http"
	case ModeSQL:
		return "sql"
	case ModeSQLSplit:
		return "sql-split"
	case ModeCommit:
		return "commit"
	case ModeHTTPNext:
		return "http-next"
	case ModeSQLNext:
		return "sql-next"
	case ModeHTTPAppend:
		return "http-append"
	case ModeSQLInsert:
		return "sql-insert"
	case ModeLiveClaims:
		return "live-claims"
	case ModeSQLBatch:
		return "sql-batch"
	case ModeLean:
		return "lean"
	case ModeSendOneRunner:
		return "send-1r"
	case ModeSendRunners:
		return "send-nr"
	case ModeSendQueued:
		return "send-queued"
	case ModeHTTPBacklog:
		return "http-backlog"
	case ModeSQLBacklog:
		return "sql-backlog"
	}
	return "mode" + strconv.Itoa(int(m))
}

// Describe says what one cycle of the mode is.
func (m Mode) Describe() string {
	switch m {
	case ModeHTTP:
		return "HTTP claim + append 1 KiB + done"
	case ModeSQL:
		return "SQL claim_next_wake + pw_stream_write + release_claim"
	case ModeSQLSplit:
		return "SQL claim + append + release as 4 autocommit statements"
	case ModeCommit:
		return "one-row UPDATE, autocommit"
	case ModeHTTPNext:
		return "HTTP append + done with claim_next"
	case ModeSQLNext:
		return "SQL append + release_and_claim_next"
	case ModeHTTPAppend:
		return "HTTP append of one 1 KiB JSON message (write token), claim held"
	case ModeSQLInsert:
		return "SQL single-row INSERT of the same message into stream_messages"
	case ModeLiveClaims:
		return "HTTP claims without done up to --live-claims; reports server RSS"
	case ModeSQLBatch:
		return "SQL claim_next_wakes + pw_stream_writes + release_claims, all N runners in each call"
	case ModeLean:
		return "SQL claim + append + release on the lean schema (the same rules, nothing else): the yardstick"
	case ModeSendOneRunner:
		return "SQL send_to_entity queueing a wake, N senders, every entity for ONE runner; publish latency"
	case ModeSendRunners:
		return "SQL send_to_entity queueing a wake, N senders, sender i's entities for runner i; publish latency"
	case ModeSendQueued:
		return "as 13, with --queued wakes queued first (set-based setup)"
	case ModeHTTPBacklog:
		return "as 1, behind --queued wakes queued first for a runner that never claims"
	case ModeSQLBacklog:
		return "as 2, behind --queued wakes queued first for a runner that never claims"
	}
	return ""
}

func (m Mode) isHTTP() bool {
	return m == ModeHTTP || m == ModeHTTPNext || m == ModeHTTPAppend || m == ModeLiveClaims || m == ModeHTTPBacklog
}

// steps names the timed steps of one cycle of the mode.
func (m Mode) steps() []string {
	switch m {
	case ModeCommit:
		return []string{"update"}
	case ModeHTTPAppend:
		return []string{"append"}
	case ModeSQLInsert:
		return []string{"insert"}
	case ModeLiveClaims:
		return []string{"claim"}
	case ModeSendOneRunner, ModeSendRunners, ModeSendQueued:
		return []string{"send"}
	case ModeHTTPNext, ModeSQLNext:
		return []string{"claim", "append", "done+next"}
	default:
		return []string{"claim", "append", "done"}
	}
}

// ParseModes parses a list like "1,2,3" or "2-4".
func ParseModes(s string) ([]Mode, error) {
	var out []Mode
	seen := map[Mode]bool{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		lo, hi, isRange := strings.Cut(part, "-")
		a, err := strconv.Atoi(lo)
		if err != nil {
			return nil, fmt.Errorf("mode %q: not a number", part)
		}
		b := a
		if isRange {
			if b, err = strconv.Atoi(hi); err != nil {
				return nil, fmt.Errorf("mode %q: not a range", part)
			}
		}
		for m := Mode(a); m <= Mode(b); m++ {
			if m < firstMode || m > lastMode {
				return nil, fmt.Errorf("mode %d: want %d to %d", m, firstMode, lastMode)
			}
			if !seen[m] {
				seen[m] = true
				out = append(out, m)
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no modes given")
	}
	return out, nil
}

// Server is a pullwake HTTP server the HTTP modes drive.
type Server struct {
	URL        string
	AdminToken string
	// Tenant the server serves: the HTTP modes create their data there.
	Tenant string
	// PID of the server process when the bench started it (0 otherwise):
	// its resident memory is reported.
	PID int
}

// StartServerFunc starts a server serving tenant against the bench's
// database and returns it with a function that stops it.
type StartServerFunc func(ctx context.Context, tenant string) (Server, func() error, error)

// Config is one bench run.
type Config struct {
	DatabaseURL string
	Modes       []Mode
	Runners     int           // concurrent runners (default 32)
	Duration    time.Duration // per mode (default 15s)
	// Entities with one queued wake created for each cycle mode; 0 picks
	// enough for the duration at a generous rate. A mode that runs out of
	// work ends early and says so.
	Entities int
	LeaseMs  int32
	// Server, when URL is set, is a running server for the HTTP modes;
	// otherwise StartServer starts one per HTTP mode.
	Server      Server
	StartServer StartServerFunc
	// Tenant for the SQL modes' data is a fresh tenant per mode; RunID
	// names it (default: the start time).
	RunID string
	// Progress receives a progress line while a mode runs (nil: none).
	Progress io.Writer
	// Log receives one line per setup step (nil: none).
	Log io.Writer
	// LiveClaims is how many claims mode 9 holds at once (default 10000).
	LiveClaims int
	// Keep leaves each mode's data in the database (leftover entities are
	// stopped); by default a mode's rows are deleted when it ends.
	Keep bool
	// NoCheckpoint skips the CHECKPOINT after each mode's setup (tests
	// share their server with others).
	NoCheckpoint bool
	// PinEntities spawns each entity for one runner (round-robin over the
	// mode's runners) instead of for any runner. A wake for any runner gets
	// one wake event per enabled runner (the wake-event rule), so with
	// hundreds of runners an unpinned setup writes hundreds of events per
	// entity; pinned, it writes one.
	PinEntities bool
	// Queued is how many wakes mode 14 queues before it sends (default
	// 100,000).
	Queued int
	// Rounds runs the list of modes this many times, one after another,
	// each round rotated by one (default 1); the ratios use each mode's
	// mean rate over the rounds.
	Rounds int
}

func (c *Config) fill() error {
	c.Runners = cmp.Or(c.Runners, 32)
	c.Duration = cmp.Or(c.Duration, 15*time.Second)
	c.LeaseMs = cmp.Or(c.LeaseMs, defaultLeaseMs)
	c.LiveClaims = cmp.Or(c.LiveClaims, 10000)
	c.Queued = cmp.Or(c.Queued, 100_000)
	c.Rounds = cmp.Or(c.Rounds, 1)
	c.RunID = cmp.Or(c.RunID, strconv.FormatInt(time.Now().Unix()%1_000_000_000, 36))
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	if c.Runners < 1 || c.Runners > 1000 {
		return fmt.Errorf("runners: want 1 to 1000, got %d", c.Runners)
	}
	if c.Duration <= 0 || c.Duration > 10*time.Minute {
		return fmt.Errorf("duration: want up to 10m, got %s", c.Duration)
	}
	if c.Queued < 0 || c.Queued > 2_000_000 {
		return fmt.Errorf("queued: want 0 to 2000000, got %d", c.Queued)
	}
	if c.Rounds < 1 || c.Rounds > 20 {
		return fmt.Errorf("rounds: want 1 to 20, got %d", c.Rounds)
	}
	if c.Entities < 0 || c.Entities > 2_000_000 {
		return fmt.Errorf("entities: want 0 to 2000000, got %d", c.Entities)
	}
	if c.DatabaseURL == "" {
		return fmt.Errorf("no database URL")
	}
	for _, m := range c.Modes {
		if m.isHTTP() && c.Server.URL == "" && c.StartServer == nil {
			return fmt.Errorf("mode %d needs a server: give its URL or a way to start one", m)
		}
	}
	return nil
}

// entitiesFor is how many entities a mode gets.
func (c *Config) entitiesFor(m Mode) int {
	switch m {
	case ModeCommit:
		return 0
	case ModeHTTPAppend, ModeSQLInsert:
		return c.Runners
	case ModeLiveClaims:
		return c.LiveClaims
	}
	if c.Entities > 0 {
		return c.Entities
	}
	// 3000 cycles/s is above anything two cores reach; add a margin for
	// the cycles in flight when the time is up.
	return int(c.Duration.Seconds()*3000) + 4*c.Runners
}

func (m Mode) isSend() bool {
	return m == ModeSendOneRunner || m == ModeSendRunners || m == ModeSendQueued
}
