// Package subscriptions serves webhook subscriptions (Durable Streams'
// /__ds/subscriptions/{id}: create, read, delete) and the public key
// push deliveries are signed with (/__ds/jwks.json).
//
// An admin registers a URL and a pattern over stream paths (or a list of
// streams); queued wakes of entities without runner whose main stream
// matches are claimed on the subscription's behalf and POSTed there,
// signed, by the delivery worker (package server/push). Only URLs
// registered here, or as an entity type's webhook target, are ever called:
// this package checks them (CheckOutboundURL) before they are stored.
//
// It owns the push_subscriptions rows as the API writes them, and nothing
// else. It takes what it needs through Config (the pool, the tenant, the
// signer, the server's admin check), never the server; the server mounts
// its routes (Routes) behind its own request deadline, text check, error
// answer and metrics.
//
// It must never claim, deliver or release a wake, nor touch the write-token
// map: deliveries are server/push's, and a push claim's token is minted
// and dropped by the server (its Host), as every claim's is. Deleting a
// subscription stops new claims for it; a claim already made ends as any
// claim does.
package subscriptions
