// Package streams serves the Durable Streams protocol under /v1/stream/,
// storing every stream and message in PostgreSQL.
//
// Each request is one call of a plpgsql function (migrations/00003_streams.sql):
// create, write (append, close, idempotent producer and Stream-Seq checks),
// read and delete. The functions take the stream row lock themselves, so the
// protocol's ordering and exactly-once rules hold across any number of server
// processes, and an append that got a 2xx is a committed row.
//
// Live readers (long-poll and SSE) never poll the database in a loop: they
// wait on an in-process notifier keyed by stream path, and the readers woken
// by one notification share one query per offset (see notifier). They are
// capped (MaxLiveReaders), and every query of every request is bounded by
// RequestTimeout. Appends made by this process call Notify directly;
// appends made elsewhere (another server, send_to_entity from psql) arrive as
// NOTIFY on NotifyChannel, which the server's shared LISTEN connection hands
// to HandleNotification. Notifications may be lost (a reconnect), so a
// waiting reader re-checks once when its timeout fires.
//
// Forks (fork.go; migrations/00010_stream_forks.sql) copy no message: a
// fork's row records the ancestor segments it reads through, pw_stream_read
// stitches them, and a stream that forks still read is soft-deleted rather
// than dropped (a foreign key makes PostgreSQL refuse the drop).
//
// Entity main streams (/v1/stream/{type}/{id}/main) are owned by their
// entity: appends need the claim's write token, checked against the
// in-memory WriteGate only (never the database); PUT, DELETE and closing are
// refused. Whether a stream is an entity's is read from its row
// (streams.entity_url) inside the request's own statement, never guessed
// from the path. Plain streams follow the WriteAuth and ReadAuth modes.
//
// What this package must not do: decide anything about claims. It reads an
// entity's status (to refuse appends to a stopped entity) inside its own
// append statement, and nothing else of the lifecycle.
package streams
