// Package server is pullwake's HTTP server: routing, handlers, credentials,
// the lease sweeper and the claim listener, around the in-memory write-token
// store (package tokens) and the stream handler (package streams).
//
// It is thin on purpose. Every lifecycle decision — who may claim, what a
// release clears, when a claim expires — is made by one plpgsql function in
// one transaction (migrations/). The server's own memory holds only write
// tokens, and it changes them after the database has decided: mint after a
// claim committed, clear only a token its claim still owns after a release
// or expiry. It must never gate a release on what memory says.
package server
