// Package tokens is the in-memory write-token store: for each entity main
// stream, the one write token that may append to it and the claim
// (consumer, epoch) that holds it.
//
// It never touches the database: it is the append hot path. It does not
// decide any claim's lifecycle either; PostgreSQL does.
//
// A write token names its claim and is signed (keyed.go), so a token the
// map does not hold (after a restart, or minted by another instance) can be
// checked by the caller against the claim's row and adopted (Adopt); a
// forged token fails the signature check without any query.
//
// Reads are lock-free: the map is split into shards, each an immutable map
// behind an atomic pointer, replaced whole (copy on write) under the shard's
// mutex on every change. Minting and clearing cost a shard copy; checking a
// token costs one atomic load and one map lookup, with no allocation.
package tokens
