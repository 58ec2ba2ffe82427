package shapes

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
)

// epoch is one life of the change feed: one slot, the tables as of its
// head, and the handles given out meanwhile.
type epoch struct {
	slot      string
	tenant    string
	maxLog    int
	confirmed pglogrepl.LSN // feed goroutine only

	base map[string]map[string]Row // base table -> key -> row (feed goroutine only)

	mu      sync.RWMutex
	head    uint64 // commit LSN of the last transaction applied
	tables  map[string]*tableState
	handles map[string]string // shape definition -> handle
	defs    map[string]string // handle -> shape definition

	done     chan struct{}
	endErr   error
	lastUsed atomic.Int64
	readers  atomic.Int32

	// applied is the WAL position the feed has read everything up to
	// (a commit's end, or the server's position in a keepalive between
	// transactions); progress is closed and replaced when it moves.
	applied  atomic.Uint64
	progMu   sync.Mutex
	progress chan struct{}
	// poke interrupts the feed's wait for a message so it asks the server
	// where it is (a status update with reply requested).
	pokeMu sync.Mutex
	poke   context.CancelFunc
}

// tableState is a shaped table: its rows now, and its recent changes.
type tableState struct {
	t       *table
	rows    map[string]Row // shaped key -> row
	log     []txn          // ascending LSN
	changes int            // in log
	floor   uint64         // every transaction after this LSN is in log
	wake    chan struct{}  // closed and replaced when a transaction lands
}

type txn struct {
	lsn     uint64
	xid     uint32
	changes []change
}

type change struct {
	key      string
	old, new Row // shaped rows; nil = not in the table
}

func newEpoch(cfg FeedConfig) *epoch {
	ep := &epoch{
		tenant: cfg.Tenant, maxLog: cfg.MaxLogChanges,
		base:    map[string]map[string]Row{},
		tables:  map[string]*tableState{},
		handles: map[string]string{}, defs: map[string]string{},
		done: make(chan struct{}), progress: make(chan struct{}),
	}
	for _, bt := range baseTables {
		ep.base[bt.Name] = map[string]Row{}
	}
	for name, t := range tables {
		ep.tables[name] = &tableState{t: t, rows: map[string]Row{}, wake: make(chan struct{})}
	}
	ep.touch()
	return ep
}

func (ep *epoch) touch()                 { ep.lastUsed.Store(time.Now().UnixNano()) }
func (ep *epoch) idleFor() time.Duration { return time.Since(time.Unix(0, ep.lastUsed.Load())) }

func (ep *epoch) ended() bool {
	select {
	case <-ep.done:
		return true
	default:
		return false
	}
}

func (ep *epoch) end(err error) {
	ep.mu.Lock()
	ep.endErr = err
	ep.mu.Unlock()
	close(ep.done)
}

// applyBase sets a base row during the initial copy (no log).
func (ep *epoch) applyBase(table, key string, r Row) {
	ep.base[table][key] = r
	ep.shape(table, nil, r, nil)
}

// decoded records one decoded change in tx; the base copy changes at
// once (later changes of the transaction read it), the shaped tables at
// commit.
func (ep *epoch) decoded(tx *pendingTx, r *relation, oldT, newT *pglogrepl.TupleData, tenant string) {
	bt := r.base
	rows := ep.base[bt.Name]
	var oldKey string
	if oldT != nil {
		oldKey = keyOf(tupleRow(r, oldT, nil), bt.PK)
	}
	var nr Row
	if newT != nil {
		prev := rows[oldKey]
		if oldT == nil {
			// The key did not change: the previous row is under the new key.
			prev = rows[keyOf(tupleRow(r, newT, nil), bt.PK)]
		}
		nr = tupleRow(r, newT, prev)
		if deref(nr[0]) != tenant {
			nr = nil
		}
	}
	if oldT == nil && nr != nil {
		oldKey = keyOf(nr, bt.PK)
	}
	old := rows[oldKey]
	if old == nil && nr == nil {
		return
	}
	delete(rows, oldKey)
	if nr != nil {
		rows[keyOf(nr, bt.PK)] = nr
	}
	tx.changes = append(tx.changes, baseChange{table: bt.Name, old: old, new: nr})
}

// commit applies tx to the shaped tables at lsn and wakes their readers.
func (ep *epoch) commit(lsn uint64, tx *pendingTx) {
	byTable := map[string][]change{}
	ep.mu.Lock()
	for _, c := range tx.changes {
		ep.shape(c.table, c.old, c.new, byTable)
	}
	ep.head = lsn
	var woken []chan struct{}
	for name, cs := range byTable {
		ts := ep.tables[name]
		ts.log = append(ts.log, txn{lsn: lsn, xid: tx.xid, changes: cs})
		ts.changes += len(cs)
		for ts.changes > ep.maxLog && len(ts.log) > 1 {
			ts.floor = ts.log[0].lsn
			ts.changes -= len(ts.log[0].changes)
			ts.log[0] = txn{}
			ts.log = ts.log[1:]
		}
		woken = append(woken, ts.wake)
		ts.wake = make(chan struct{})
	}
	ep.mu.Unlock()
	for _, ch := range woken {
		close(ch)
	}
}

// shape applies a base change (old -> new) to every shaped table over
// that base; with log set, records the shaped changes there.
func (ep *epoch) shape(base string, old, nr Row, log map[string][]change) {
	for name, ts := range ep.tables {
		t := ts.t
		if t.Base != base {
			continue
		}
		var so, sn Row
		var key string
		if nr != nil {
			if r, ok := t.Map(nr); ok {
				sn = r
			}
		}
		if old != nil {
			if r, ok := t.Map(old); ok {
				key = keyOf(r, t.PK)
			}
		}
		if sn != nil {
			if k := keyOf(sn, t.PK); key != "" && k != key {
				// The key changed: a delete of the old, an insert of the new.
				ep.shapeOne(name, ts, key, ts.rows[key], nil, log)
				key = k
			} else {
				key = k
			}
		}
		if key == "" {
			continue
		}
		so = ts.rows[key]
		ep.shapeOne(name, ts, key, so, sn, log)
	}
}

func (ep *epoch) shapeOne(name string, ts *tableState, key string, so, sn Row, log map[string][]change) {
	if so == nil && sn == nil || rowsEqual(so, sn) {
		return
	}
	if sn == nil {
		delete(ts.rows, key)
	} else {
		ts.rows[key] = sn
	}
	if log != nil {
		log[name] = append(log[name], change{key: key, old: so, new: sn})
	}
}

func rowsEqual(a, b Row) bool {
	if a == nil || b == nil || len(a) != len(b) {
		return false
	}
	for i := range a {
		if (a[i] == nil) != (b[i] == nil) || a[i] != nil && *a[i] != *b[i] {
			return false
		}
	}
	return true
}

// lastMicros makes handles unique within the process even when two are
// made in the same microsecond.
var lastMicros atomic.Int64

func uniqueMicros() int64 {
	for {
		now, last := time.Now().UnixMicro(), lastMicros.Load()
		if now <= last {
			now = last + 1
		}
		if lastMicros.CompareAndSwap(last, now) {
			return now
		}
	}
}

// maxHandles bounds the shape definitions an epoch remembers; past it the
// registry starts afresh (their clients refetch with new handles).
const maxHandles = 10000

// handleFor returns the handle of definition def in this epoch, making one
// (or a new one, with rotate) when needed.
func (ep *epoch) handleFor(def string, rotate bool) string {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	if h, ok := ep.handles[def]; ok && !rotate {
		return h
	}
	if h, ok := ep.handles[def]; ok {
		delete(ep.defs, h)
	}
	if len(ep.handles) >= maxHandles {
		ep.handles, ep.defs = map[string]string{}, map[string]string{}
	}
	hs := fnv.New32a()
	hs.Write([]byte(def))
	h := fmt.Sprintf("%08x-%d", hs.Sum32(), uniqueMicros())
	ep.handles[def] = h
	ep.defs[h] = def
	return h
}

// snapshot returns the table's rows (sorted by key) and the head they are
// the state at.
func (ep *epoch) snapshot(name string) ([]Row, uint64) {
	ep.mu.RLock()
	defer ep.mu.RUnlock()
	ts := ep.tables[name]
	keys := make([]string, 0, len(ts.rows))
	for k := range ts.rows {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	rows := make([]Row, len(keys))
	for i, k := range keys {
		rows[i] = ts.rows[k]
	}
	return rows, ep.head
}

// since returns the table's transactions after lsn (at most about limit
// changes, whole transactions), the head, whether the answer reaches it,
// and false when lsn is older than the log keeps. wake is closed when the
// next transaction lands.
func (ep *epoch) since(name string, lsn uint64, limit int) (txs []txn, head uint64, complete, ok bool, wake <-chan struct{}) {
	ep.mu.RLock()
	defer ep.mu.RUnlock()
	ts := ep.tables[name]
	if lsn < ts.floor {
		return nil, ep.head, false, false, ts.wake
	}
	i, _ := slices.BinarySearchFunc(ts.log, lsn+1, func(t txn, target uint64) int {
		switch {
		case t.lsn < target:
			return -1
		case t.lsn > target:
			return 1
		}
		return 0
	})
	n := 0
	for ; i < len(ts.log); i++ {
		if n > 0 && n+len(ts.log[i].changes) > limit {
			return txs, ts.log[i-1].lsn, false, true, ts.wake
		}
		txs = append(txs, ts.log[i])
		n += len(ts.log[i].changes)
	}
	return txs, ep.head, true, true, ts.wake
}

// advance records that the feed has read the WAL up to lsn.
func (ep *epoch) advance(lsn uint64) {
	if lsn <= ep.applied.Load() {
		return
	}
	ep.applied.Store(lsn)
	ep.progMu.Lock()
	close(ep.progress)
	ep.progress = make(chan struct{})
	ep.progMu.Unlock()
}

func (ep *epoch) progressed() <-chan struct{} {
	ep.progMu.Lock()
	defer ep.progMu.Unlock()
	return ep.progress
}

func (ep *epoch) setPoke(cancel context.CancelFunc) {
	ep.pokeMu.Lock()
	ep.poke = cancel
	ep.pokeMu.Unlock()
}

func (ep *epoch) pokeFeed() {
	ep.pokeMu.Lock()
	if ep.poke != nil {
		ep.poke()
	}
	ep.pokeMu.Unlock()
}

// errBehind is a wait for the feed that ran out of time.
var errBehind = errors.New("the change feed is behind")

// waitApplied waits until the feed has read the WAL up to target, asking
// the server for its position while it waits.
func (ep *epoch) waitApplied(ctx context.Context, target uint64, limit time.Duration) error {
	t := time.NewTimer(limit)
	defer t.Stop()
	for ep.applied.Load() < target {
		prog := ep.progressed()
		if ep.applied.Load() >= target {
			break
		}
		ep.pokeFeed()
		retry := time.NewTimer(5 * time.Millisecond)
		select {
		case <-prog:
		case <-retry.C:
		case <-t.C:
			retry.Stop()
			return errBehind
		case <-ep.done:
			retry.Stop()
			return errBehind
		case <-ctx.Done():
			retry.Stop()
			return ctx.Err()
		}
		retry.Stop()
	}
	return nil
}
