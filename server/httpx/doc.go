// Package httpx is the shared ground of pullwake's HTTP handlers: how a
// request is read and checked, and how an answer or an error is written.
//
// It owns the JSON API's request rules (Decode: a body of at most MaxBody
// bytes, valid UTF-8, one JSON object whose wrong-typed field is named;
// CheckText: no invalid UTF-8 or NUL in a path or query; the one path rule
// of PathGuard), the error answer {"error": {"code", "message", "details"?}}
// (Error, Errorf, BadRequest, Unauthorized, and Fail, which also maps the
// SQL functions' domain codes and a lost database to their statuses), the
// id and entity-type patterns every route checks (IDRE, EntityTypeRE,
// EntityURL), and the rule for every URL the server calls
// (CheckOutboundURL).
//
// It knows no route, no credential and no lifecycle: it must never read
// or write the database, the token maps or a server's configuration, and
// it imports nothing of server/. Every package under server/ may import it,
// so it stays small and decides nothing a handler should.
package httpx
