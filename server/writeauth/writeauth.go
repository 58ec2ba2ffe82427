package writeauth

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/server/tokens"
)

// LoadKey returns the tenant's write-token signing key, created in the
// database on first use and shared by every instance.
func LoadKey(ctx context.Context, pool *pgxpool.Pool, tenant string) ([]byte, error) {
	key, err := db.New().TokenKey(ctx, pool, tenant)
	if err != nil {
		return nil, fmt.Errorf("load the write-token key: %w", err)
	}
	return key, nil
}

// NewStore returns a token store signed with the tenant's shared key. When
// the key cannot be read (the schema is not migrated: the server then
// serves /readyz 503 until it is) the store gets a key of its own, and
// the error says so: its tokens are then valid in this process only.
func NewStore(ctx context.Context, pool *pgxpool.Pool, tenant string) (*tokens.Store, error) {
	key, err := LoadKey(ctx, pool, tenant)
	if err != nil {
		return tokens.New(), fmt.Errorf("%w: write tokens will be valid in this process only (restart the server once the schema is migrated)", err)
	}
	return tokens.NewKeyed(key), nil
}

// maxEnded bounds the memory of claims known to have ended: at the cap the
// set starts over (an ended claim's token then costs one query again).
const maxEnded = 4096

// Gate authorizes appends; see the package doc.
type Gate struct {
	store  *tokens.Store
	pool   *pgxpool.Pool
	q      *db.Queries
	tenant string

	mu    sync.Mutex
	ended map[tokens.Owner]struct{} // claims found not active: they never become active again
}

// New returns a gate over store that falls back on pool's claims of tenant.
// With a nil pool it answers from memory only.
func New(store *tokens.Store, pool *pgxpool.Pool, tenant string) *Gate {
	return &Gate{store: store, pool: pool, q: db.New(), tenant: tenant, ended: map[tokens.Owner]struct{}{}}
}

// Authorize reports whether token may append to the entity main stream at
// path, and the epoch of the claim it belongs to.
func (g *Gate) Authorize(ctx context.Context, path, token string) (int64, bool) {
	if o, ok := g.store.Valid(path, token); ok {
		return o.Epoch, true
	}
	if g.pool == nil {
		return -1, false
	}
	owner, secret, ok := g.store.Parse(path, token)
	if !ok || g.isEnded(owner) {
		return -1, false
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	row, err := g.q.WriteClaim(qctx, g.pool, db.WriteClaimParams{
		TenantID: g.tenant, ConsumerID: owner.ConsumerID, Epoch: owner.Epoch,
		WriteTokenHash: tokens.SecretHash(secret)})
	switch {
	case errors.Is(err, db.ErrNotFound):
		return -1, false
	case err != nil:
		return -1, false // the append could not commit either
	case !row.Active:
		g.markEnded(owner)
		return -1, false
	case row.StreamPath != path || !row.Matches:
		return -1, false // signed by us for this stream: not expected
	}
	g.store.Adopt(path, owner, token)
	return owner.Epoch, true
}

func (g *Gate) isEnded(o tokens.Owner) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.ended[o]
	return ok
}

func (g *Gate) markEnded(o tokens.Owner) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.ended) >= maxEnded {
		clear(g.ended)
	}
	g.ended[o] = struct{}{}
}
