package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/server/streams"
)

// tailReadRows and tailReadBytes bound one read, as the stream handler's
// reads are bounded: a long stream is printed chunk by chunk.
const (
	tailReadRows  = 1000
	tailReadBytes = 1 << 20
)

var tailOffsetRe = regexp.MustCompile(`^[0-9]{16}$`)

// tailMessage is one message as `pullwake tail --json` prints it (one
// object a line): its offset (give it to --from to print what follows it)
// and the message, as JSON in a JSON stream, else as text, or as base64 in
// message_base64 when it is not UTF-8.
type tailMessage struct {
	Offset        string          `json:"offset"`
	Message       json.RawMessage `json:"message,omitempty"`
	MessageBase64 []byte          `json:"message_base64,omitempty"`
}

func runTail(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tail", `tail STREAM [flags]

Prints the messages of a stream, read from the database with the query the
stream routes use (pw_stream_read). STREAM is a stream path:
/v1/stream/chat/42/main, or chat/42/main (under /v1/stream/). A JSON
stream prints one message a line (compact JSON); any other stream prints
its bytes as they are.

Without --follow it prints what is there and exits. With --follow (-f) it
keeps printing messages as they are appended, like tail -f, until Ctrl-C
(exit 0) or the stream is closed (exit 0, noted on stderr) or deleted
(exit 1). It waits on the servers' stream notifications (LISTEN
pullwake_streams) and also re-reads every --poll-interval, which catches
appends that notify nobody (send_to_entity from psql) or a lost
notification. Reading does not count as access for the stream's TTL.`)
	var d dbFlags
	d.register(fs)
	from := fs.String("from", "-1", "print the messages after this offset: -1 = from the start, now = only new ones (with --follow), or an offset such as a Stream-Next-Offset or one --json printed")
	var follow bool
	fs.BoolVar(&follow, "follow", false, "keep printing new messages until Ctrl-C")
	fs.BoolVar(&follow, "f", false, "shorthand for --follow")
	asJSON := fs.Bool("json", false, `print one JSON object a message: {"offset", "message"} ("message_base64" for bytes that are not UTF-8)`)
	poll := fs.Duration("poll-interval", time.Second, "with --follow, re-read at least this often (100ms to 1h)")
	pos, err := parseCommand(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: want STREAM, got %d argument(s) (see pullwake tail --help)", errUsage, len(pos))
	}
	path := streamPath(pos[0])
	if path == "" {
		return fmt.Errorf("%w: STREAM %q is not a stream path (like /v1/stream/chat/42/main)", errUsage, pos[0])
	}
	var after *int64 // nil: the tail
	switch {
	case *from == "-1":
		after = new(int64)
	case *from == "now":
	case tailOffsetRe.MatchString(*from):
		n, err := strconv.ParseInt(*from, 10, 64)
		if err != nil {
			return fmt.Errorf("%w: --from %q is out of range", errUsage, *from)
		}
		after = &n
	default:
		return fmt.Errorf("%w: --from %q: want -1, now or a 16-digit offset", errUsage, *from)
	}
	if *poll < 100*time.Millisecond || *poll > time.Hour {
		return fmt.Errorf("%w: --poll-interval %s: want 100ms to 1h", errUsage, *poll)
	}
	pool, err := openPool(ctx, d)
	if err != nil {
		return err
	}
	defer pool.Close()

	t := &tailer{pool: pool, q: db.New(), tenant: d.tenant, path: path, out: bufio.NewWriter(stdout), asJSON: *asJSON}
	var wait *streamWaiter
	if follow {
		if wait, err = listenStreams(ctx, pool, d.tenant, path); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			fmt.Fprintf(stderr, "pullwake tail: %v; re-reading every %s instead\n", err, *poll)
		}
		if wait != nil {
			defer wait.close()
		}
	}
	for {
		row, err := t.read(ctx, after)
		if err != nil {
			if follow && ctx.Err() != nil {
				return nil // Ctrl-C
			}
			return err
		}
		after = &row.LastSeq
		if row.LastSeq < row.TailSeq {
			continue // more than one read's worth: read on at once
		}
		if !follow {
			return nil
		}
		if row.Closed {
			fmt.Fprintf(stderr, "pullwake tail: stream %s is closed\n", path)
			return nil
		}
		if err := wait.next(ctx, *poll); err != nil {
			if ctx.Err() != nil {
				return nil // Ctrl-C
			}
			// The LISTEN connection broke: poll from now on.
			fmt.Fprintf(stderr, "pullwake tail: %v; re-reading every %s instead\n", err, *poll)
			wait.close()
			wait = nil
		}
	}
}

// streamPath turns the STREAM argument into a stream's full path, or ""
// when it cannot be one.
func streamPath(arg string) string {
	p := arg
	if !strings.HasPrefix(p, streams.Prefix) {
		p = streams.Prefix + strings.TrimLeft(p, "/")
	}
	rest := strings.TrimPrefix(p, streams.Prefix)
	if rest == "" || strings.HasSuffix(rest, "/") || strings.Contains(rest, "//") || !utf8.ValidString(p) {
		return ""
	}
	for _, seg := range strings.Split(rest, "/") {
		if seg == "." || seg == ".." {
			return ""
		}
	}
	return p
}

// tailer reads a stream and prints its messages.
type tailer struct {
	pool   *pgxpool.Pool
	q      *db.Queries
	tenant string
	path   string
	out    *bufio.Writer
	asJSON bool
}

// read reads one chunk after after (nil = the tail: nothing) and prints
// it; a missing stream or an offset past the tail is an error.
func (t *tailer) read(ctx context.Context, after *int64) (db.StreamReadRow, error) {
	qctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	row, err := t.q.StreamRead(qctx, t.pool, db.StreamReadParams{
		TenantID: t.tenant, Path: t.path, After: after, MaxRows: tailReadRows, MaxBytes: tailReadBytes, Touch: false,
	})
	if err != nil {
		return row, fmt.Errorf("read stream %s: %w", t.path, err)
	}
	switch row.Status {
	case "ok":
	case "not_found", "gone":
		return row, fmt.Errorf("stream %s not found (tenant %s)", t.path, t.tenant)
	case "bad_offset":
		return row, fmt.Errorf("%w: --from %s is past the tail %s of stream %s", errUsage,
			offset16(*after), offset16(row.TailSeq), t.path)
	default:
		return row, fmt.Errorf("read stream %s: status %q", t.path, row.Status)
	}
	start := row.LastSeq - int64(len(row.Data)) // messages have consecutive offsets
	if after != nil && *after != start {
		start = -1 // not consecutive: only the last one's offset is known
	}
	jsonMode := isJSONType(row.ContentType)
	for i, m := range row.Data {
		if err := t.print(m, jsonMode, messageOffset(start, i, len(row.Data), row.LastSeq)); err != nil {
			return row, err
		}
	}
	if err := t.out.Flush(); err != nil {
		return row, fmt.Errorf("write: %w", err)
	}
	return row, nil
}

// messageOffset is the offset of message i of n read up to last, when the
// read's first offset start is known (else only the last one's is).
func messageOffset(start int64, i, n int, last int64) string {
	switch {
	case start >= 0:
		return offset16(start + int64(i) + 1)
	case i == n-1:
		return offset16(last)
	}
	return ""
}

func (t *tailer) print(m []byte, jsonMode bool, offset string) error {
	if t.asJSON {
		tm := tailMessage{Offset: offset}
		switch {
		case jsonMode && json.Valid(m):
			tm.Message = json.RawMessage(m)
		case utf8.Valid(m):
			tm.Message, _ = json.Marshal(string(m))
		default:
			tm.MessageBase64 = m
		}
		b, err := json.Marshal(tm)
		if err != nil {
			return fmt.Errorf("encode message at %s: %w", offset, err)
		}
		_, err = t.out.Write(append(b, '\n'))
		return err
	}
	if !jsonMode {
		_, err := t.out.Write(m) // bytes as they are, like the stream's body
		return err
	}
	var buf bytes.Buffer
	if json.Compact(&buf, m) != nil {
		buf.Reset()
		buf.Write(m)
	}
	buf.WriteByte('\n')
	_, err := t.out.Write(buf.Bytes())
	return err
}

func offset16(seq int64) string { return fmt.Sprintf("%016d", seq) }

// isJSONType reports whether a stream's content type is JSON (its messages
// are JSON values), as the stream handler decides it.
func isJSONType(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && strings.EqualFold(mt, "application/json")
}

// streamWaiter waits for the notifications of one stream on a connection
// of its own that LISTENs on the streams' channel.
type streamWaiter struct {
	conn   *pgxpool.Conn
	tenant string
	path   string
}

// listenStreams LISTENs on the streams' notification channel.
func listenStreams(ctx context.Context, pool *pgxpool.Pool, tenant, path string) (*streamWaiter, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("listen for appends: %w", err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+streams.NotifyChannel); err != nil {
		conn.Release()
		return nil, fmt.Errorf("listen for appends: %w", err)
	}
	return &streamWaiter{conn: conn, tenant: tenant, path: path}, nil
}

// next returns when the stream may have changed: a notification names it,
// or poll has passed. A nil waiter only sleeps for poll. An error is the
// LISTEN connection's (or ctx's).
func (w *streamWaiter) next(ctx context.Context, poll time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, poll)
	defer cancel()
	if w == nil {
		<-wctx.Done()
		return ctx.Err()
	}
	for {
		n, err := w.conn.Conn().WaitForNotification(wctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, context.DeadlineExceeded) || wctx.Err() != nil {
				return nil // poll
			}
			return fmt.Errorf("waiting for appends: %w", err)
		}
		var p struct {
			TenantID string `json:"tenant_id"`
			Path     string `json:"path"`
		}
		if json.Unmarshal([]byte(n.Payload), &p) == nil && p.Path == w.path && (p.TenantID == "" || p.TenantID == w.tenant) {
			return nil
		}
	}
}

// close ends the LISTEN connection: it is closed rather than returned to
// the pool, so no session keeps listening.
func (w *streamWaiter) close() {
	if w == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = w.conn.Conn().Close(ctx)
	w.conn.Release()
}
