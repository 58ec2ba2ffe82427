package server

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/groupcommit"
)

// Group commit of releases and claims (Config.GroupCommit): concurrent
// done callbacks share one release_claims transaction, concurrent claim
// requests one claim_next_wakes transaction (internal/groupcommit). A batch
// of one is the single-item call, so an idle server pays nothing for it. The
// handlers do their memory steps (token map, notifications) after their
// item's batch has committed, per item, as on the single-call path.

type releaseItem struct {
	consumer string
	epoch    int64
	acks     []byte
	hash     []byte
}

type claimItem struct {
	runner string
	ttl    int32
}

type claimResult struct {
	row   db.ClaimNextWakeRow
	found bool
}

// batchers are the server's group-commit batchers (nil when off).
type batchers struct {
	release *groupcommit.Batcher[releaseItem, db.ReleaseClaimRow]
	claim   *groupcommit.Batcher[claimItem, claimResult]
}

func newBatchers(pool *pgxpool.Pool, q *db.Queries, tenant string, notify bool, inFlight int, observe func(name string, n int)) *batchers {
	obs := func(name string) func(int) {
		if observe == nil {
			return nil
		}
		return func(n int) { observe(name, n) }
	}
	return &batchers{
		release: groupcommit.New(groupcommit.Config[releaseItem, db.ReleaseClaimRow]{
			Name: "release", InFlight: inFlight, Classify: groupcommit.PgClassify, Retryable: groupcommit.PgRetryable,
			ObserveBatch: obs("release"),
			ExecOne: func(ctx context.Context, it releaseItem) (db.ReleaseClaimRow, error) {
				return q.ReleaseClaim(ctx, pool, db.ReleaseClaimParams{ConsumerID: it.consumer, Epoch: it.epoch,
					Acks: it.acks, TenantID: tenant, ClaimTokenHash: it.hash, Notify: notify})
			},
			Exec: func(ctx context.Context, items []releaseItem) ([]groupcommit.Outcome[db.ReleaseClaimRow], error) {
				arg := db.ReleaseClaimsParams{TenantID: tenant, Notify: notify,
					ConsumerIds: make([]string, len(items)), Epochs: make([]int64, len(items)),
					Acks: make([]string, len(items)), ClaimTokenHashes: make([][]byte, len(items))}
				for i, it := range items {
					arg.ConsumerIds[i], arg.Epochs[i], arg.Acks[i], arg.ClaimTokenHashes[i] = it.consumer, it.epoch, string(it.acks), it.hash
				}
				rows, err := q.ReleaseClaims(ctx, pool, arg)
				if err != nil {
					return nil, err
				}
				out := make([]groupcommit.Outcome[db.ReleaseClaimRow], len(rows))
				for i, r := range rows {
					out[i].Err = groupcommit.PgItemError(r.ErrCode, r.ErrMessage)
					out[i].Value = db.ReleaseClaimRow{Released: r.Released, EntityCleared: r.EntityCleared,
						ClaimStatus: r.ClaimStatus, EntityUrl: r.EntityUrl, StreamPath: r.StreamPath,
						EntityStatus: r.EntityStatus, AckedOffset: r.AckedOffset, QueuedWakeID: r.QueuedWakeID}
				}
				return out, nil
			},
		}),
		claim: groupcommit.New(groupcommit.Config[claimItem, claimResult]{
			Name: "claim", InFlight: inFlight, Classify: groupcommit.PgClassify, Retryable: groupcommit.PgRetryable,
			ObserveBatch: obs("claim"),
			ExecOne: func(ctx context.Context, it claimItem) (claimResult, error) {
				c, err := q.ClaimNextWake(ctx, pool, db.ClaimNextWakeParams{RunnerID: it.runner, LeaseTtlMs: it.ttl, TenantID: tenant})
				if errors.Is(err, db.ErrNotFound) {
					return claimResult{}, nil
				}
				return claimResult{row: c, found: err == nil}, err
			},
			Exec: func(ctx context.Context, items []claimItem) ([]groupcommit.Outcome[claimResult], error) {
				arg := db.ClaimNextWakesParams{TenantID: tenant,
					RunnerIds: make([]string, len(items)), LeaseTtlMs: make([]int32, len(items))}
				for i, it := range items {
					arg.RunnerIds[i], arg.LeaseTtlMs[i] = it.runner, it.ttl
				}
				rows, err := q.ClaimNextWakes(ctx, pool, arg)
				if err != nil {
					return nil, err
				}
				out := make([]groupcommit.Outcome[claimResult], len(rows))
				for i, r := range rows {
					out[i].Err = groupcommit.PgItemError(r.ErrCode, r.ErrMessage)
					out[i].Value = claimResult{found: r.HasClaim, row: db.ClaimNextWakeRow{
						WakeID: r.WakeID, ConsumerID: r.ConsumerID, Epoch: r.Epoch, EntityUrl: r.EntityUrl,
						StreamPath: r.StreamPath, AckedOffset: r.AckedOffset, ClaimToken: r.ClaimToken,
						LeaseExpiresAt: r.LeaseExpiresAt, LeaseTtlMs: r.LeaseTtlMs}}
				}
				return out, nil
			},
		}),
	}
}

func (b *batchers) start(ctx context.Context) {
	b.release.Start(ctx)
	b.claim.Start(ctx)
}

func (b *batchers) stop() {
	b.release.Stop()
	b.claim.Stop()
}

// releaseClaim runs one release: through the batcher when group commit is
// on, else as its own release_claim call.
func (s *Server) releaseClaim(ctx context.Context, consumer string, epoch int64, acks, tokenHash []byte) (db.ReleaseClaimRow, error) {
	if s.batch != nil {
		return s.batch.release.Do(ctx, releaseItem{consumer: consumer, epoch: epoch, acks: acks, hash: tokenHash})
	}
	return s.q.ReleaseClaim(ctx, s.pool, db.ReleaseClaimParams{
		ConsumerID: consumer, Epoch: epoch, Acks: acks, TenantID: s.cfg.Tenant, ClaimTokenHash: tokenHash,
		Notify: s.cfg.Publisher == nil})
}

// claimNextWake runs one claim; found is false when there is no work.
func (s *Server) claimNextWake(ctx context.Context, runner string, ttl int32) (db.ClaimNextWakeRow, bool, error) {
	if s.batch != nil {
		r, err := s.batch.claim.Do(ctx, claimItem{runner: runner, ttl: ttl})
		return r.row, r.found, err
	}
	c, err := s.q.ClaimNextWake(ctx, s.pool, db.ClaimNextWakeParams{RunnerID: runner, LeaseTtlMs: ttl, TenantID: s.cfg.Tenant})
	if errors.Is(err, db.ErrNotFound) {
		return c, false, nil
	}
	return c, err == nil, err
}
