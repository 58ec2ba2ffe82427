// Package reconcile keeps the server's in-memory token maps in line with
// the database: the write tokens (server/tokens) and the cache of runner
// token hashes the runner routes' auth reads.
//
// Two paths say the same thing. At once: the notifications of a claim's
// end (ClaimsChannel: release_claim, expire_claims, takeovers, and the
// server's own publisher, ClaimEndPayload) and of a runner's changed token
// (RunnerTokensChannel), which the server's LISTEN connection hands to
// OnClaimNotification and OnRunnerTokenNotification. Anyway: a timer
// (Start, every Interval; RunOnce, also on every reconnect of the LISTEN
// connection) that asks the database which held tokens' claims are still
// active and which cached hashes still match, so a lost notification
// costs at most one interval plus one query. Status reports a timer that
// kept failing (for /readyz).
//
// It takes narrow dependencies through Config (the pool, the tenant, the
// token store, the runner-token cache as an interface), never the server.
//
// It must never decide a claim's lifecycle, nor mint a token: it only
// drops what the database says has ended, and only if that claim still
// holds it (tokens.Store.ClearIfOwner; a hash only if it is still the one
// read, RunnerTokenCache.DropIf). It never gates a request itself.
package reconcile
