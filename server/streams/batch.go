package streams

import (
	"context"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/groupcommit"
)

// Writer runs one stream write (an append, a close, or both) and returns
// pw_stream_write_as's answer. Config.Writer plugs one into the append path;
// without it each append is its own pw_stream_write_as call.
type Writer interface {
	Write(ctx context.Context, arg db.StreamWriteAsParams) (db.StreamWriteAsRow, error)
}

// write is the append path's one database call.
func (h *Handler) write(ctx context.Context, arg db.StreamWriteAsParams) (db.StreamWriteAsRow, error) {
	if h.cfg.Writer != nil {
		return h.cfg.Writer.Write(ctx, arg)
	}
	return h.q.StreamWriteAs(ctx, h.cfg.Pool, arg)
}

// BatchWriter is a Writer with group commit: concurrent plain appends (a
// body, no producer headers, no Stream-Seq, not closing) of its tenant run
// as one pw_stream_writes transaction (internal/groupcommit); every other
// write is its own pw_stream_write_as call. Each caller gets its own
// statuses, after its batch committed. Start before use; Stop after the
// HTTP server has finished its requests.
type BatchWriter struct {
	pool   *pgxpool.Pool
	tenant string
	q      *db.Queries
	b      *groupcommit.Batcher[db.StreamWriteAsParams, db.StreamWriteAsRow]
}

// NewBatchWriter builds a BatchWriter for tenant that runs up to inFlight
// batches at once (0: one); observe, when set, is told each batch's size.
func NewBatchWriter(pool *pgxpool.Pool, tenant string, inFlight int, observe func(size int)) *BatchWriter {
	w := &BatchWriter{pool: pool, tenant: tenant, q: db.New()}
	w.b = groupcommit.New(groupcommit.Config[db.StreamWriteAsParams, db.StreamWriteAsRow]{
		Name: "append", Exec: w.exec, InFlight: inFlight, ObserveBatch: observe,
		ExecOne: func(ctx context.Context, arg db.StreamWriteAsParams) (db.StreamWriteAsRow, error) {
			return w.q.StreamWriteAs(ctx, w.pool, arg)
		},
		Classify: groupcommit.PgClassify, Retryable: groupcommit.PgRetryable,
	})
	return w
}

// Start runs the batcher until Stop.
func (w *BatchWriter) Start(ctx context.Context) { w.b.Start(ctx) }

// Stop answers every queued append and returns.
func (w *BatchWriter) Stop() { w.b.Stop() }

// Write implements Writer.
func (w *BatchWriter) Write(ctx context.Context, arg db.StreamWriteAsParams) (db.StreamWriteAsRow, error) {
	if arg.TenantID != w.tenant || len(arg.Data) == 0 || arg.Close || arg.StreamSeq != nil ||
		arg.ProducerID != nil || arg.ContentType == nil || arg.Now != nil {
		return w.q.StreamWriteAs(ctx, w.pool, arg)
	}
	return w.b.Do(ctx, arg)
}

func (w *BatchWriter) exec(ctx context.Context, items []db.StreamWriteAsParams) ([]groupcommit.Outcome[db.StreamWriteAsRow], error) {
	arg := db.StreamWritesParams{TenantID: w.tenant, Paths: make([]string, len(items)),
		ContentTypes: make([]string, len(items)), Counts: make([]int32, len(items)),
		EntityWriters: make([]bool, len(items))}
	for i, it := range items {
		arg.Paths[i], arg.ContentTypes[i], arg.Counts[i] = it.Path, *it.ContentType, int32(len(it.Data))
		arg.EntityWriters[i] = it.EntityWriter
		arg.Data = append(arg.Data, it.Data...)
	}
	rows, err := w.q.StreamWrites(ctx, w.pool, arg)
	if err != nil {
		return nil, err
	}
	out := make([]groupcommit.Outcome[db.StreamWriteAsRow], len(rows))
	for i, r := range rows {
		out[i].Err = groupcommit.PgItemError(r.ErrCode, r.ErrMessage)
		out[i].Value = db.StreamWriteAsRow{Status: r.Status, TailSeq: r.TailSeq, Closed: r.Closed,
			ProducerEpoch: r.ProducerEpoch, ProducerSeq: r.ProducerSeq}
	}
	return out, nil
}
