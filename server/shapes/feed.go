package shapes

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Publication is the publication (migration 00023) the feed decodes.
const Publication = "pullwake_shapes"

// ErrWALLevel is the feed's refusal to start on a database whose
// wal_level is not logical.
type ErrWALLevel struct{ Level string }

func (e ErrWALLevel) Error() string {
	return "shape sync needs the database's wal_level=logical (it is " + e.Level + "): set wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL; everything else in pullwake works without it"
}

// FeedConfig configures the change feed.
type FeedConfig struct {
	Pool       *pgxpool.Pool // for the wal_level check
	ConnString string        // the replication and copy connections
	Tenant     string
	Logger     *slog.Logger
	// IdleTimeout (10m): the feed stops (its slot goes) when no shape
	// request came for this long and no live reader waits.
	IdleTimeout time.Duration
	// MaxLogChanges (100000): changes kept per table; a reader behind
	// the oldest is told to refetch (409).
	MaxLogChanges int
	// StatusInterval (1s): how often the feed confirms its position.
	StatusInterval time.Duration
}

// Feed is the change feed of the shaped tables: a temporary logical
// replication slot decoded with pgoutput, started by the first shape
// request, and the in-memory copy of each table it keeps with a log of
// recent changes. One epoch is one slot; when it ends (connection lost,
// idle, Close) the next request starts a new one and every handle of the
// old one answers 409.
type Feed struct {
	cfg    FeedConfig
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	cur      *epoch
	starting chan struct{}
	lastErr  error
	lastAt   time.Time
}

// NewFeed returns a stopped feed; the first Acquire starts it.
func NewFeed(cfg FeedConfig) *Feed {
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	cfg.IdleTimeout = cmp.Or(cfg.IdleTimeout, 10*time.Minute)
	cfg.MaxLogChanges = cmp.Or(cfg.MaxLogChanges, 100000)
	cfg.StatusInterval = cmp.Or(cfg.StatusInterval, time.Second)
	cfg.Tenant = cmp.Or(cfg.Tenant, "default")
	ctx, cancel := context.WithCancel(context.Background())
	return &Feed{cfg: cfg, log: cfg.Logger, ctx: ctx, cancel: cancel}
}

// Close ends the current epoch (its slot is dropped with its connection)
// and waits for it.
func (f *Feed) Close() {
	f.cancel()
	f.wg.Wait()
}

// Running reports whether an epoch is live (a slot exists).
func (f *Feed) Running() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.cur != nil && !f.cur.ended()
}

// retryAfterFailure is how long a failed start is answered from memory
// before the next request tries again.
const retryAfterFailure = time.Second

// acquire returns the live epoch, starting one if none runs.
func (f *Feed) acquire(ctx context.Context) (*epoch, error) {
	f.mu.Lock()
	if ep := f.cur; ep != nil && !ep.ended() {
		ep.touch()
		f.mu.Unlock()
		return ep, nil
	}
	if f.ctx.Err() != nil {
		f.mu.Unlock()
		return nil, errors.New("shape feed stopped: the server is shutting down")
	}
	if f.starting == nil {
		if f.lastErr != nil && time.Since(f.lastAt) < retryAfterFailure {
			err := f.lastErr
			f.mu.Unlock()
			return nil, err
		}
		ch := make(chan struct{})
		f.starting = ch
		f.wg.Add(1)
		go f.run(ch)
	}
	ch := f.starting
	f.mu.Unlock()
	select {
	case <-ch:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if ep := f.cur; ep != nil && !ep.ended() {
		ep.touch()
		return ep, nil
	}
	return nil, cmp.Or(f.lastErr, errors.New("shape feed ended at start"))
}

// run starts an epoch, announces it on started, and follows the slot
// until the epoch ends.
func (f *Feed) run(started chan struct{}) {
	defer f.wg.Done()
	ep, conn, err := f.start(f.ctx)
	f.mu.Lock()
	f.starting = nil
	if err != nil {
		f.lastErr, f.lastAt = err, time.Now()
		f.mu.Unlock()
		close(started)
		f.log.Warn("shape feed did not start", "err", err)
		return
	}
	f.lastErr = nil
	f.cur = ep
	f.mu.Unlock()
	close(started)
	f.log.Info("shape feed started", "slot", ep.slot, "lsn", pglogrepl.LSN(ep.head).String())

	err = f.follow(f.ctx, ep, conn)
	closeCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_ = conn.Close(closeCtx)
	cancel()
	ep.end(err)
	f.mu.Lock()
	if f.cur == ep {
		f.cur = nil
	}
	f.mu.Unlock()
	if err != nil && f.ctx.Err() == nil {
		f.log.Warn("shape feed ended: its handles answer 409 and the next shape request starts a new feed", "slot", ep.slot, "err", err)
	} else {
		f.log.Info("shape feed stopped", "slot", ep.slot)
	}
}

// sessionParams are the settings of both feed sessions, so the copy and
// the decoded changes print timestamps alike.
var sessionParams = map[string]string{"TimeZone": "UTC", "DateStyle": "ISO, MDY", "application_name": "pullwake-shapes"}

// connConfig is one connection of the feed; the URL's pgxpool-only
// parameters (pool_max_conns, ...) are dropped.
func (f *Feed) connConfig(replication bool) (*pgconn.Config, error) {
	pc, err := pgxpool.ParseConfig(f.cfg.ConnString)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	c := &pc.ConnConfig.Copy().Config
	if c.RuntimeParams == nil {
		c.RuntimeParams = map[string]string{}
	}
	for k, v := range sessionParams {
		c.RuntimeParams[k] = v
	}
	if replication {
		c.RuntimeParams["replication"] = "database"
	}
	return c, nil
}

var slotSeq atomic.Uint64

// start checks wal_level, creates the temporary slot with an exported
// snapshot, copies every base table in that snapshot, and starts
// decoding at the slot's consistent point.
func (f *Feed) start(ctx context.Context) (*epoch, *pgconn.PgConn, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var level string
	if err := f.cfg.Pool.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
		return nil, nil, fmt.Errorf("read wal_level: %w", err)
	}
	if level != "logical" {
		return nil, nil, ErrWALLevel{Level: level}
	}
	rc, err := f.connConfig(true)
	if err != nil {
		return nil, nil, err
	}
	conn, err := pgconn.ConnectConfig(ctx, rc)
	if err != nil {
		return nil, nil, fmt.Errorf("open the replication connection (the database user needs the REPLICATION attribute): %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			_ = conn.Close(context.Background())
		}
	}()
	ep := newEpoch(f.cfg)
	ep.slot = fmt.Sprintf("pullwake_shapes_%d_%d", os.Getpid(), slotSeq.Add(1))
	res, err := pglogrepl.CreateReplicationSlot(ctx, conn, ep.slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
		Temporary: true, SnapshotAction: "EXPORT_SNAPSHOT", Mode: pglogrepl.LogicalReplication,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("create replication slot %s (needs a free slot: max_replication_slots, max_wal_senders): %w", ep.slot, err)
	}
	lsn, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return nil, nil, fmt.Errorf("slot consistent point %q: %w", res.ConsistentPoint, err)
	}
	if err := f.copyTables(ctx, ep, res.SnapshotName); err != nil {
		return nil, nil, err
	}
	ep.head = uint64(lsn)
	ep.confirmed = lsn
	ep.applied.Store(uint64(lsn))
	for _, ts := range ep.tables {
		ts.floor = ep.head
	}
	err = pglogrepl.StartReplication(ctx, conn, ep.slot, lsn, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names '" + Publication + "'"},
	})
	if err != nil {
		return nil, nil, fmt.Errorf("start replication (publication %s comes with migration 00023): %w", Publication, err)
	}
	ok = true
	return ep, conn, nil
}

// copyTables reads the tenant's rows of every base table in the slot's
// exported snapshot, as text.
func (f *Feed) copyTables(ctx context.Context, ep *epoch, snapshot string) error {
	cc, err := f.connConfig(false)
	if err != nil {
		return err
	}
	conn, err := pgconn.ConnectConfig(ctx, cc)
	if err != nil {
		return fmt.Errorf("open the copy connection: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '"+snapshot+"'").ReadAll(); err != nil {
		return fmt.Errorf("open the slot's snapshot: %w", err)
	}
	for _, bt := range baseTables {
		q := "SELECT " + strings.Join(bt.Columns, ", ") + " FROM " + bt.Name + " WHERE tenant_id = $1"
		res := conn.ExecParams(ctx, q, [][]byte{[]byte(f.cfg.Tenant)}, nil, nil, nil).Read()
		if res.Err != nil {
			return fmt.Errorf("copy %s: %w", bt.Name, res.Err)
		}
		for _, raw := range res.Rows {
			r := make(Row, len(raw))
			for i, v := range raw {
				if v != nil {
					r[i] = str(string(v))
				}
			}
			ep.applyBase(bt.Name, keyOf(r, bt.PK), r)
		}
	}
	if _, err := conn.Exec(ctx, "COMMIT").ReadAll(); err != nil {
		return fmt.Errorf("end the copy: %w", err)
	}
	// The copy is the state at the consistent point: no log yet.
	for _, ts := range ep.tables {
		ts.log = nil
		ts.changes = 0
	}
	return nil
}

// relation maps a decoded relation's columns to a base table's.
type relation struct {
	base *baseTable
	idx  []int // relation column i -> base column index, -1 = not read
}

// follow decodes the slot until ctx ends, the connection fails, or the
// feed goes idle.
func (f *Feed) follow(ctx context.Context, ep *epoch, conn *pgconn.PgConn) error {
	rels := map[uint32]*relation{}
	var tx *pendingTx
	nextStatus := time.Now().Add(f.cfg.StatusInterval)
	sendStatus := func() error {
		err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
			WALWritePosition: ep.confirmed, WALFlushPosition: ep.confirmed, WALApplyPosition: ep.confirmed,
		})
		nextStatus = time.Now().Add(f.cfg.StatusInterval)
		return err
	}
	// pctx ends when a request pokes the feed (epoch.waitApplied): the
	// wait for a message stops, and the feed asks the server where it is.
	pctx, pcancel := context.WithCancel(ctx)
	ep.setPoke(pcancel)
	defer func() { ep.setPoke(nil); pcancel() }()
	for {
		if ctx.Err() != nil {
			return nil
		}
		if pctx.Err() != nil {
			pctx, pcancel = context.WithCancel(ctx)
			ep.setPoke(pcancel)
			err := pglogrepl.SendStandbyStatusUpdate(ctx, conn, pglogrepl.StandbyStatusUpdate{
				WALWritePosition: ep.confirmed, WALFlushPosition: ep.confirmed, WALApplyPosition: ep.confirmed, ReplyRequested: true,
			})
			if err != nil {
				return fmt.Errorf("ask for the server's position: %w", err)
			}
		}
		if time.Now().After(nextStatus) {
			if err := sendStatus(); err != nil {
				return fmt.Errorf("confirm position: %w", err)
			}
			if ep.idleFor() > f.cfg.IdleTimeout && ep.readers.Load() == 0 {
				return nil
			}
		}
		rctx, cancel := context.WithDeadline(pctx, nextStatus)
		msg, err := conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if pgconn.Timeout(err) || pctx.Err() != nil {
				continue
			}
			return fmt.Errorf("receive: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication error: %s (%s)", m.Message, m.Code)
		case *pgproto3.CopyData:
			if len(m.Data) == 0 {
				continue
			}
			switch m.Data[0] {
			case pglogrepl.PrimaryKeepaliveMessageByteID:
				k, err := pglogrepl.ParsePrimaryKeepaliveMessage(m.Data[1:])
				if err != nil {
					return fmt.Errorf("parse keepalive: %w", err)
				}
				// Nothing of ours is pending: the server may forget WAL up
				// to its end (as PostgreSQL's own subscriber does).
				if tx == nil && k.ServerWALEnd > ep.confirmed {
					ep.confirmed = k.ServerWALEnd
				}
				if tx == nil {
					// Every transaction that committed before this
					// position has been sent.
					ep.advance(uint64(k.ServerWALEnd))
				}
				if k.ReplyRequested {
					if err := sendStatus(); err != nil {
						return fmt.Errorf("confirm position: %w", err)
					}
				}
			case pglogrepl.XLogDataByteID:
				x, err := pglogrepl.ParseXLogData(m.Data[1:])
				if err != nil {
					return fmt.Errorf("parse xlog data: %w", err)
				}
				lm, err := pglogrepl.Parse(x.WALData)
				if err != nil {
					return fmt.Errorf("parse pgoutput message: %w", err)
				}
				if tx, err = f.apply(ep, rels, tx, lm); err != nil {
					return err
				}
			}
		}
	}
}

// pendingTx is a decoded transaction not yet committed to the tables.
type pendingTx struct {
	xid     uint32
	changes []baseChange
}

type baseChange struct {
	table    string
	old, new Row // base rows; nil = absent
}

func (f *Feed) apply(ep *epoch, rels map[uint32]*relation, tx *pendingTx, lm pglogrepl.Message) (*pendingTx, error) {
	switch m := lm.(type) {
	case *pglogrepl.RelationMessage:
		var bt *baseTable
		for i := range baseTables {
			if baseTables[i].Name == m.RelationName && m.Namespace == "public" {
				bt = &baseTables[i]
			}
		}
		if bt == nil {
			delete(rels, m.RelationID)
			return tx, nil
		}
		r := &relation{base: bt, idx: make([]int, len(m.Columns))}
		for i, c := range m.Columns {
			r.idx[i] = slices.Index(bt.Columns, c.Name)
		}
		rels[m.RelationID] = r
	case *pglogrepl.BeginMessage:
		return &pendingTx{xid: m.Xid}, nil
	case *pglogrepl.CommitMessage:
		if tx != nil {
			ep.commit(uint64(m.CommitLSN), tx)
		}
		if m.TransactionEndLSN > ep.confirmed {
			ep.confirmed = m.TransactionEndLSN
		}
		ep.advance(uint64(m.TransactionEndLSN))
		return nil, nil
	case *pglogrepl.InsertMessage:
		if r := rels[m.RelationID]; r != nil && tx != nil {
			ep.decoded(tx, r, nil, m.Tuple, f.cfg.Tenant)
		}
	case *pglogrepl.UpdateMessage:
		if r := rels[m.RelationID]; r != nil && tx != nil {
			ep.decoded(tx, r, m.OldTuple, m.NewTuple, f.cfg.Tenant)
		}
	case *pglogrepl.DeleteMessage:
		if r := rels[m.RelationID]; r != nil && tx != nil {
			ep.decoded(tx, r, m.OldTuple, nil, f.cfg.Tenant)
		}
	case *pglogrepl.TruncateMessage:
		for _, id := range m.RelationIDs {
			if rels[id] != nil {
				return nil, fmt.Errorf("table %s was truncated", rels[id].base.Name)
			}
		}
	}
	return tx, nil
}

// tupleRow reads a decoded tuple into a base row; unchanged TOAST values
// come from prev.
func tupleRow(r *relation, t *pglogrepl.TupleData, prev Row) Row {
	row := make(Row, len(r.base.Columns))
	for i, c := range t.Columns {
		if i >= len(r.idx) || r.idx[i] < 0 {
			continue
		}
		j := r.idx[i]
		switch c.DataType {
		case pglogrepl.TupleDataTypeText:
			row[j] = str(string(c.Data))
		case pglogrepl.TupleDataTypeToast:
			if prev != nil {
				row[j] = prev[j]
			}
		}
	}
	return row
}

func keyOf(r Row, idx []int) string {
	var b strings.Builder
	for n, i := range idx {
		if n > 0 {
			b.WriteByte(0)
		}
		b.WriteString(deref(r[i]))
	}
	return b.String()
}
