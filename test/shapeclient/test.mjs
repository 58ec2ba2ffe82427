// Electric's own TypeScript client (@electric-sql/client: ShapeStream and
// Shape) against pullwake's shape endpoint. Each shape pullwake serves is
// followed while rows change through pullwake's REST API, and the client's
// materialized rows must match what REST answers, live: after each change
// the test waits (bounded) until they match, or fails with both sides.
//
// Run by internal/clienttest (TestShapeClient), which starts `pullwake
// serve` and passes:
//   PULLWAKE_URL           the server's base URL
//   PULLWAKE_ADMIN_TOKEN   its admin token
// To force a must-refetch the script prints "@@restart" and waits for a
// line on stdin: the Go test restarts the server process (every shape
// handle dies with it) and answers "restarted".
import assert from 'node:assert/strict'
import { createInterface } from 'node:readline'
import { ShapeStream, Shape } from '@electric-sql/client'

const BASE = process.env.PULLWAKE_URL
const ADMIN = process.env.PULLWAKE_ADMIN_TOKEN
if (!BASE || !ADMIN) throw new Error('PULLWAKE_URL and PULLWAKE_ADMIN_TOKEN must be set')
const WAIT_MS = Number(process.env.SHAPE_WAIT_MS || 15000)
const RUN = Date.now().toString(36) // fresh names, should a database be reused

// ---- REST ----

async function rest(method, path, body, token = ADMIN) {
  const res = await fetch(BASE + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  const text = await res.text()
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`)
  return text ? JSON.parse(text) : null
}

// ---- what REST says each shape must hold, normalized ----

// ms reads a time as REST (RFC 3339) or a shape (PostgreSQL's text form or
// ISO 8601) prints it; null stays null.
function ms(v) {
  if (v === null || v === undefined) return null
  if (typeof v === 'number' || typeof v === 'bigint') return Number(v)
  const m = /^(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d(?::?\d\d)?)?$/.exec(v)
  if (!m) return Date.parse(v)
  let zone = m[4] || 'Z'
  if (/^[+-]\d\d$/.test(zone)) zone += ':00'
  else if (/^[+-]\d{4}$/.test(zone)) zone = zone.slice(0, 3) + ':' + zone.slice(3)
  return Date.parse(`${m[1]}T${m[2]}${m[3] ? m[3].slice(0, 4) : ''}${zone}`)
}

const tables = {
  entities: {
    key: 'url',
    rest: async () => rest('GET', '/_electric/entities'),
    row: (r) => ({ url: r.url, type: r.type, status: r.status, tags: r.tags ?? {}, parent: r.parent ?? null,
      created_at: ms(r.created_at), updated_at: ms(r.updated_at) }),
  },
  entity_types: {
    key: 'name',
    rest: async () => rest('GET', '/_electric/entity-types'),
    row: (r) => ({ name: r.name, description: r.description ?? '', revision: Number(r.revision),
      inbox_schemas: r.inbox_schemas ?? null, created_at: ms(r.created_at), updated_at: ms(r.updated_at) }),
  },
  runners: {
    key: 'id',
    rest: async () => rest('GET', '/_electric/runners'),
    // The wake stream is served at /runners/{id}/wake and /v1/stream/runners/{id}/wake
    // alike; an unset kind is Electric's default, local (docs/shapes.md).
    row: (r) => ({ id: r.id, label: r.label, kind: r.kind || 'local', admin_status: r.admin_status,
      wake_stream: r.wake_stream?.replace(/^\/v1\/stream\//, '/'),
      created_at: ms(r.created_at), updated_at: ms(r.updated_at) }),
  },
  runner_runtime_diagnostics: {
    key: 'runner_id',
    // A runner appears once it has heartbeated.
    rest: async () => (await rest('GET', '/_electric/runners')).filter((r) => r.last_seen_at)
      .map((r) => ({ ...r, runner_id: r.id })),
    row: (r) => ({ runner_id: r.runner_id, last_seen_at: ms(r.last_seen_at),
      liveness_lease_expires_at: ms(r.liveness_lease_expires_at), diagnostics: r.diagnostics ?? null }),
  },
  entity_dispatch_state: {
    key: 'entity_url',
    rest: async () => (await rest('GET', '/entities')).map((e) => ({ ...e.dispatch, entity_url: e.url })),
    row: (r) => ({ entity_url: r.entity_url, active_consumer_id: r.active_consumer_id ?? null,
      active_epoch: r.active_epoch == null ? null : Number(r.active_epoch), active_runner_id: r.active_runner_id ?? null,
      active_lease_expires_at: ms(r.active_lease_expires_at), outstanding_wake_id: r.outstanding_wake_id ?? null,
      acked_offset: Number(r.acked_offset), last_sent_offset: Number(r.last_sent_offset),
      last_released_at: ms(r.last_released_at) }),
  },
  users: { key: 'id', rest: async () => [], row: (r) => ({ id: r.id }) },
  entity_effective_permissions: { key: 'id', rest: async () => [], row: (r) => ({ id: Number(r.id) }) },
}

// ---- shapes ----

const parser = { int8: (v) => Number(v) }
const followed = [] // {name, table, shape, stream, filter, refetches}

function follow(name, table, params = {}, opts = {}) {
  const stream = new ShapeStream({
    url: `${BASE}${opts.path || '/v1/shape'}`,
    params: { table, ...params },
    headers: { Authorization: `Bearer ${ADMIN}` },
    parser,
    liveSse: !!opts.sse,
    // Retries stay short, so the restart below costs a second, not the default back-off.
    backoffOptions: { initialDelay: 50, maxDelay: 500, multiplier: 1.5 },
    // Called once the client gave up (a 4xx, or retries exhausted): the test fails.
    onError: (e) => { f.error = e },
  })
  const f = { name, table, stream, shape: new Shape(stream), filter: opts.filter || (() => true), refetches: 0,
    columns: params.columns, error: null }
  stream.subscribe((messages) => {
    for (const m of messages) if (m.headers?.control === 'must-refetch') f.refetches++
  })
  followed.push(f)
  return f
}

// expected computes what f must hold now, from REST.
async function expected(f) {
  const t = tables[f.table]
  const want = new Map()
  for (const r of await t.rest()) {
    if (!f.filter(r)) continue
    let row = t.row(r)
    if (f.columns) row = Object.fromEntries(Object.entries(row).filter(([k]) => f.columns.includes(k)))
    want.set(String(r[t.key]), row)
  }
  return want
}

function actual(f) {
  const t = tables[f.table]
  const got = new Map()
  for (const r of f.shape.currentRows) {
    const row = t.row(r)
    for (const k of Object.keys(row)) if (!(k in r)) delete row[k] // a column the shape does not carry
    got.set(String(r[t.key]), row)
  }
  return got
}

const sorted = (m) => Object.fromEntries([...m.entries()].sort(([a], [b]) => a.localeCompare(b)))

// settle waits until every shape in fs matches REST (re-reading REST on
// each change, so a REST answer that moved on is caught up with), or fails
// after WAIT_MS with the difference.
async function settle(step, fs = followed) {
  const deadline = Date.now() + WAIT_MS
  for (const f of fs) {
    for (;;) {
      if (f.error) throw new Error(`${step}: shape ${f.name} (table ${f.table}) stopped: ${f.error.status ?? ''} ${f.error.message}`)
      const want = sorted(await expected(f))
      const got = sorted(actual(f))
      try {
        assert.deepStrictEqual(got, want)
        break
      } catch (e) {
        if (Date.now() > deadline) {
          throw new Error(`${step}: shape ${f.name} (table ${f.table}) does not match REST after ${WAIT_MS} ms\n${e.message}`)
        }
      }
      // Wait for the shape's next change (or a short tick: REST may be the side that lags).
      await new Promise((resolve) => {
        const t = setTimeout(done, 200)
        const unsub = f.shape.subscribe(done)
        function done() { clearTimeout(t); unsub(); resolve() }
      })
    }
  }
  console.log(`ok  ${step}`)
}

// ---- the scenario ----

const stdin = createInterface({ input: process.stdin })
const stdinLines = stdin[Symbol.asyncIterator]()
async function restartServer() {
  console.log('@@restart')
  const { value, done } = await stdinLines.next()
  if (done || value.trim() !== 'restarted') throw new Error(`restart: the driver answered ${JSON.stringify(value)}`)
}

const R1 = `r1-${RUN}`
const R2 = `r2-${RUN}`
const TYPE = `chat${RUN}`.slice(0, 60).toLowerCase()
const E1 = `/${TYPE}/one`
const E2 = `/${TYPE}/two`
const E3 = `/${TYPE}/three`

// Rows before anyone subscribes: the initial snapshot must carry them.
await rest('POST', '/_electric/entity-types', { name: TYPE, description: 'chat rooms',
  inbox_schemas: { message: { type: 'object' } } })
const r1 = await rest('POST', '/_electric/runners', { id: R1, label: 'first', kind: 'test' })
await rest('PUT', `/_electric/entities${E1}`, {})
await rest('PUT', `/entities${E2}`, { runner_id: R1 })
await rest('POST', `/_electric/runners/${R1}/heartbeat`, { lease_ms: 60000, diagnostics: { version: 'test' } }, r1.runner_token)

follow('entities', 'entities')
follow('entities (sse, Electric path)', 'entities', {}, { sse: true, path: '/_electric/electric/v1/shape' })
follow('running entities (where)', 'entities', { where: 'status = $1', params: { 1: 'running' } },
  { filter: (r) => r.status === 'running' })
follow('entity_dispatch_state', 'entity_dispatch_state')
follow('entity_types', 'entity_types')
follow('runners', 'runners')
follow('runners (columns)', 'runners', { columns: ['id', 'admin_status'] })
follow('runner_runtime_diagnostics', 'runner_runtime_diagnostics')
follow('users', 'users')
follow('entity_effective_permissions', 'entity_effective_permissions')

await settle('initial snapshot')

// Inserts and updates.
const r2 = await rest('POST', '/_electric/runners', { id: R2, label: 'second' })
await rest('PUT', `/entities${E3}`, { runner_id: R2 })
await settle('runner registered, entity spawned')

await rest('POST', `/_electric/runners/${R2}/heartbeat`, { diagnostics: { version: 'two' } }, r2.runner_token)
await rest('POST', `/_electric/runners/${R1}/disable`)
await settle('heartbeat, runner disabled')

await rest('POST', '/_electric/entity-types', { name: TYPE, description: 'chat rooms, revised' })
await settle('entity type revised')

// A message, a claim and its done: the entity runs, then idles; the
// where-shape gains the row, then loses it (a delete on the wire).
const sent = await rest('POST', `/entities${E3}`, { payload: { text: 'hi' } })
const wake = await rest('POST', `/_electric/runners/${R2}/claim`, {}, r2.runner_token)
assert.equal(wake?.entity_url, E3, 'the claim hands out the wake of the message sent')
await settle('claimed: entity running')
await rest('POST', wake.callback.replace(/^https?:\/\/[^/]+/, ''), { epoch: wake.epoch, done: true,
  acks: [{ stream: wake.stream_path, offset: sent.offset }] }, wake.claim_token)
await settle('done: entity idle, gone from the running shape')

// Stops and kills, then an entity type deleted: a delete on the wire.
await rest('DELETE', `/entities${E2}`)
await rest('DELETE', `/_electric/entities${E1}`)
await rest('DELETE', `/_electric/entity-types/${TYPE}`)
await settle('stopped, killed, entity type deleted')

// Must-refetch: a restart of the server process invalidates every handle;
// each client gets a 409, drops its rows and syncs again.
const before = followed.map((f) => f.refetches)
await restartServer()
await rest('PUT', `/entities/${TYPE}/four`, {})
await rest('POST', '/_electric/entity-types', { name: `${TYPE}b`, description: 'after the restart' })
await settle('after a server restart')
const deadline = Date.now() + WAIT_MS
while (followed.some((f, i) => f.refetches === before[i]) && Date.now() < deadline) {
  await new Promise((r) => setTimeout(r, 100))
}
for (const [i, f] of followed.entries()) {
  assert.ok(f.refetches > before[i], `shape ${f.name} saw no must-refetch after the restart`)
}
console.log('ok  every shape saw a must-refetch')
await settle('live after the refetch', followed)
await rest('POST', `/_electric/runners/${R1}/enable`)
await settle('change after the refetch')

for (const f of followed) f.stream.unsubscribeAll()
stdin.close()
console.log(`shapeclient: ${followed.length} shapes followed, all matched REST`)
process.exit(0)
