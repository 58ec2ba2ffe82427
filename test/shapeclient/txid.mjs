// Electric's agents UI waits for each action it makes through the API: it
// reads `txid` from the answer and calls awaitTxId on its entities
// collection (@tanstack/electric-db-collection over pullwake's entities
// shape), which resolves when a change carrying that transaction id
// arrives. This script does what the UI does, with the same packages and
// collection options: spawn, rename (the title tag), kill (SIGKILL). Each
// awaitTxId must resolve (within the UI's 10 s) and the collection must
// then hold the change.
//
// Run by internal/clienttest (TestAwaitTxID), which starts `pullwake
// serve` and passes PULLWAKE_URL and PULLWAKE_ADMIN_TOKEN.
import assert from 'node:assert/strict'
import { createCollection } from '@tanstack/db'
import { electricCollectionOptions } from '@tanstack/electric-db-collection'

const BASE = process.env.PULLWAKE_URL
const ADMIN = process.env.PULLWAKE_ADMIN_TOKEN
if (!BASE || !ADMIN) throw new Error('PULLWAKE_URL and PULLWAKE_ADMIN_TOKEN must be set')
const RUN = Date.now().toString(36)
const UI_WAIT_MS = 10_000 // what the UI gives awaitTxId

async function rest(method, path, body) {
  const res = await fetch(BASE + path, {
    method,
    headers: { Authorization: `Bearer ${ADMIN}`, 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  })
  const text = await res.text()
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`)
  return text ? JSON.parse(text) : null
}

// The UI's entities collection (its columns and int8 parser); the admin
// token goes in a header, where the UI's proxy would add it.
const entities = createCollection(
  electricCollectionOptions({
    id: `entities`,
    shapeOptions: {
      url: `${BASE}/_electric/electric/v1/shape`,
      params: {
        table: `entities`,
        columns: [`url`, `type`, `status`, `tags`, `spawn_args`, `sandbox`, `dispatch_policy`, `parent`,
          `created_by`, `type_revision`, `inbox_schemas`, `state_schemas`, `created_at`, `updated_at`],
      },
      headers: { Authorization: `Bearer ${ADMIN}` },
      parser: { int8: (v) => Number(v) },
    },
    getKey: (item) => item.url,
  }),
)
await entities.preload()

// awaited runs one UI action: the answer's txid must be a number, and
// awaitTxId must resolve with the change in the collection.
async function awaited(what, call, check) {
  const answer = await call()
  assert.equal(typeof answer.txid, 'number', `${what}: the answer's txid is not a number: ${JSON.stringify(answer)}`)
  const started = Date.now()
  await entities.utils.awaitTxId(answer.txid, UI_WAIT_MS)
  check()
  console.log(`${what}: txid ${answer.txid} seen after ${Date.now() - started} ms`)
}

const type = `uitx${RUN}`
await rest('POST', '/_electric/entity-types', { name: type, description: 'awaitTxId' })
const url = `/${type}/e1`

await awaited('spawn', () => rest('PUT', `/_electric/entities${url}`, {}), () => {
  assert.equal(entities.get(url)?.status, 'idle')
})
await awaited('rename', () => rest('POST', `/_electric/entities${url}/tags/title`, { value: 'Renamed' }), () => {
  const tags = entities.get(url)?.tags
  assert.equal((typeof tags === 'string' ? JSON.parse(tags) : tags)?.title, 'Renamed')
})
await awaited('kill', () => rest('POST', `/_electric/entities${url}/signal`, { signal: 'SIGKILL', reason: 'Killed from agents UI' }), () => {
  assert.equal(entities.get(url)?.status, 'killed')
})

await entities.cleanup()
console.log('awaitTxId: ok')
