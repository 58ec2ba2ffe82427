package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
)

// releaseResult is release_claim's answer as `pullwake release` prints it.
type releaseResult struct {
	Released      bool   `json:"released"`
	EntityCleared bool   `json:"entity_cleared"`
	ClaimStatus   string `json:"claim_status"`
	EntityURL     string `json:"entity_url"`
	StreamPath    string `json:"stream_path"`
	EntityStatus  string `json:"entity_status"`
	AckedOffset   string `json:"acked_offset"`
	QueuedWakeID  string `json:"queued_wake_id,omitempty"`
}

func runRelease(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("release", `release CONSUMER EPOCH [flags]

Releases the claim (CONSUMER, EPOCH) through the release_claim SQL function,
exactly as a runner's done callback does: the claim becomes released and, if
it still holds its entity's dispatch slot, the entity goes idle (or stopped),
its wake completes and a new wake is queued when sent messages lie past the
acked offset. A repeated release changes nothing and prints released: false.
CONSUMER is the wake id, like wake-12.`)
	var d dbFlags
	d.register(fs)
	acks := fs.String("acks", "[]", `acked stream offsets, a JSON array like '[{"stream":"/v1/stream/chat/1/main","offset":"0000000000000003"}]'`)
	asJSON := fs.Bool("json", false, "print the result as a JSON object")
	pos, err := parseCommand(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) != 2 {
		return fmt.Errorf("%w: want CONSUMER EPOCH, got %d argument(s) (see pullwake release --help)", errUsage, len(pos))
	}
	consumer := pos[0]
	// Digits only: strconv.ParseInt alone takes "+1", another spelling of
	// epoch 1, and an operator who typed a sign meant something else.
	epoch, err := strconv.ParseInt(pos[1], 10, 64)
	if err != nil || epoch < 1 || strings.TrimLeft(pos[1], "0123456789") != "" {
		return fmt.Errorf("%w: EPOCH must be a positive integer, got %q", errUsage, pos[1])
	}
	if !json.Valid([]byte(*acks)) || !strings.HasPrefix(strings.TrimSpace(*acks), "[") {
		return fmt.Errorf("%w: --acks must be a JSON array, got %q", errUsage, *acks)
	}
	pool, err := openPool(ctx, d)
	if err != nil {
		return err
	}
	defer pool.Close()

	row, err := db.New().ReleaseClaim(ctx, pool, db.ReleaseClaimParams{
		ConsumerID: consumer,
		Epoch:      epoch,
		Acks:       json.RawMessage(*acks),
		TenantID:   d.tenant,
		// Every server must hear of it and drop the claim's write token.
		Notify: true,
	})
	if err != nil {
		// By code; the message is the function's without its SQLSTATE.
		if de := db.DomainError(err); de != nil {
			switch de.Code {
			case "CLAIM_NOT_FOUND":
				return fmt.Errorf("claim %s/%d not found (tenant %s)", consumer, epoch, d.tenant)
			case "CLAIM_SUPERSEDED": // an epoch older than the entity's newest claim
				return fmt.Errorf("%s (tenant %s)", de.Message, d.tenant)
			case "INVALID_REQUEST": // an ack the claim refuses
				return fmt.Errorf("%w: --acks: %s", errUsage, de.Message)
			}
		}
		return fmt.Errorf("release claim %s/%d: %w", consumer, epoch, err)
	}
	res := releaseResult{
		Released:      row.Released,
		EntityCleared: row.EntityCleared,
		ClaimStatus:   row.ClaimStatus,
		EntityURL:     row.EntityUrl,
		StreamPath:    row.StreamPath,
		EntityStatus:  row.EntityStatus,
		AckedOffset:   row.AckedOffset,
		QueuedWakeID:  row.QueuedWakeID,
	}
	if *asJSON {
		return writeJSON(stdout, res)
	}
	fmt.Fprintf(stdout, "released: %t\n", res.Released)
	fmt.Fprintf(stdout, "entity_cleared: %t\n", res.EntityCleared)
	fmt.Fprintf(stdout, "claim_status: %s\n", res.ClaimStatus)
	fmt.Fprintf(stdout, "entity_url: %s\n", res.EntityURL)
	fmt.Fprintf(stdout, "stream_path: %s\n", res.StreamPath)
	fmt.Fprintf(stdout, "entity_status: %s\n", res.EntityStatus)
	fmt.Fprintf(stdout, "acked_offset: %s\n", res.AckedOffset)
	if res.QueuedWakeID != "" {
		fmt.Fprintf(stdout, "queued_wake_id: %s\n", res.QueuedWakeID)
	}
	return nil
}

// parseCommand parses an operator command's flags (interspersed with its
// positional arguments). --help prints the usage to stdout and returns
// flag.ErrHelp (exit 0); a bad flag returns one errUsage error (exit 2)
// rather than the flag package's message plus the whole usage.
func parseCommand(fs *flag.FlagSet, args []string, stdout io.Writer) ([]string, error) {
	for _, a := range args {
		if a == "--" {
			break
		}
		if a == "-h" || a == "-help" || a == "--help" || a == "--h" {
			fs.SetOutput(stdout)
			fs.Usage()
			return nil, flag.ErrHelp
		}
	}
	fs.SetOutput(io.Discard)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return nil, fmt.Errorf("%w: %v (see pullwake %s --help)", errUsage, err, fs.Name())
	}
	return pos, nil
}

// openPool checks the database flags and connects to the database of an
// operator command.
func openPool(ctx context.Context, d dbFlags) (*pgxpool.Pool, error) {
	if err := d.check(); err != nil {
		return nil, err
	}
	pool, err := pgxpool.New(ctx, d.url)
	if err != nil {
		return nil, fmt.Errorf("open database: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, explainDB(d.url, fmt.Errorf("connect to database: %w", err))
	}
	return pool, nil
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
