// Package entitytypes serves Electric's entity types: the routes under
// /_electric/entity-types (register, read, list, delete, amend the
// schemas), the manifests of serve endpoints a registration may name, and
// the typed validation the entity routes call before a spawn or a send
// (ValidateSpawn, ValidateSend, their answers encoded by Refusal).
//
// It owns the entity_types rows and the rules on them: every schema
// compiles, a registered inbox or state schema key never changes, each
// change bumps the revision (checked against the revision read, so
// concurrent writers never lose an amendment). It takes what it needs
// through Config (the pool, the tenant, the logger, the outbound client,
// the server's admin check); the server mounts its routes (Routes) behind
// its own request deadline, text check, error answer and metrics.
//
// It must never touch an entity, a wake, a claim or the token maps, nor
// decide anything of a claim's lifecycle: a type's default dispatch
// policy is read by spawn_entity in SQL, not here. It calls no URL but a
// serve endpoint an admin named (CheckOutboundURL, no redirects, bounded
// in size and time), and it never imports server.
package entitytypes
