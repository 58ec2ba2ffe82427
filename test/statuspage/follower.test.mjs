// The status page's shape follower (server/statuspage/static/shape.js)
// against scripted answers of Electric's protocol: chunks until
// up-to-date, live requests with the cursor, inserts, updates that carry
// only the changed columns, deletes, must-refetch (409 or in the body),
// 401 until a token is given, and a table the server does not serve.
// Run by internal/clienttest (TestShapeFollower) with plain node.
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { ShapeFollower } from '../../server/statuspage/static/shape.js'

// script replaces fetch with answers given in order; it records each
// request and stops the follower when the script runs out.
function script(answers) {
  const requests = []
  let follower
  globalThis.fetch = async (url, init) => {
    requests.push({ url: new URL(url), auth: init.headers.Authorization })
    const a = answers.shift()
    if (!a) {
      follower.stop()
      return new Promise((_, reject) => init.signal.addEventListener('abort', () => reject(Object.assign(new Error('aborted'), { name: 'AbortError' }))))
    }
    if (a.before) a.before()
    return new Response(a.status === 204 ? null : JSON.stringify(a.body ?? []), { status: a.status ?? 200, headers: a.headers ?? {} })
  }
  return { requests, attach: (f) => { follower = f } }
}

function follow(s, opts = {}) {
  const changes = []
  const f = new ShapeFollower({
    url: 'http://pullwake.test/v1/shape', table: 'entities', token: () => opts.token?.() ?? '',
    onChange: (x) => changes.push(Object.fromEntries([...x.rows.entries()].map(([k, v]) => [k, { ...v }]))),
    onUnauthorized: opts.onUnauthorized,
  })
  s.attach(f)
  return { f, changes }
}

const done = (f) => new Promise((resolve) => {
  const t = setInterval(() => { if (f.stopped || f.state === 'unavailable') { clearInterval(t); resolve() } }, 5)
})

const ins = (key, value) => ({ key, value, headers: { operation: 'insert' } })
const upd = (key, value) => ({ key, value, headers: { operation: 'update' } })
const del = (key) => ({ key, value: {}, headers: { operation: 'delete' } })
const upToDate = { headers: { control: 'up-to-date' } }

test('chunks, live changes, updates merged, deletes', async () => {
  const s = script([
    { body: [ins('a', { url: '/a', status: 'idle' }), ins('b', { url: '/b', status: 'idle' })],
      headers: { 'electric-handle': 'h1', 'electric-offset': '0_1' } },
    { body: [upToDate], headers: { 'electric-handle': 'h1', 'electric-offset': '5_0', 'electric-up-to-date': '' } },
    { body: [upd('a', { status: 'running' }), upToDate],
      headers: { 'electric-handle': 'h1', 'electric-offset': '7_0', 'electric-cursor': 'c1', 'electric-up-to-date': '' } },
    { body: [del('b'), upToDate], headers: { 'electric-handle': 'h1', 'electric-offset': '9_0', 'electric-cursor': 'c2' } },
  ])
  const { f, changes } = follow(s)
  f.start()
  await done(f)
  const q = s.requests.map((r) => Object.fromEntries(r.url.searchParams))
  assert.deepEqual(q, [
    { table: 'entities', offset: '-1' },
    { table: 'entities', offset: '0_1', handle: 'h1' },
    { table: 'entities', offset: '5_0', handle: 'h1', live: 'true' },
    { table: 'entities', offset: '7_0', handle: 'h1', live: 'true', cursor: 'c1' },
    { table: 'entities', offset: '9_0', handle: 'h1', live: 'true', cursor: 'c2' },
  ])
  assert.deepEqual(changes.at(-1), { a: { url: '/a', status: 'running' } })
  assert.deepEqual(changes[1], { a: { url: '/a', status: 'running' }, b: { url: '/b', status: 'idle' } })
})

test('409 and must-refetch drop the rows and start over on the new handle', async () => {
  const s = script([
    { body: [ins('a', { url: '/a' }), upToDate], headers: { 'electric-handle': 'h1', 'electric-offset': '1_0', 'electric-up-to-date': '' } },
    { status: 409, body: [{ headers: { control: 'must-refetch' } }], headers: { 'electric-handle': 'h2' } },
    { body: [ins('b', { url: '/b' }), upToDate], headers: { 'electric-handle': 'h2', 'electric-offset': '2_0', 'electric-up-to-date': '' } },
    { body: [{ headers: { control: 'must-refetch' } }], headers: { 'electric-handle': 'h3' } },
    { body: [ins('c', { url: '/c' }), upToDate], headers: { 'electric-handle': 'h3', 'electric-offset': '3_0', 'electric-up-to-date': '' } },
  ])
  const { f, changes } = follow(s)
  f.start()
  await done(f)
  const q = s.requests.map((r) => Object.fromEntries(r.url.searchParams))
  assert.deepEqual(q[2], { table: 'entities', offset: '-1', handle: 'h2' })
  assert.deepEqual(q[4], { table: 'entities', offset: '-1', handle: 'h3' })
  assert.deepEqual(changes, [{ a: { url: '/a' } }, {}, { b: { url: '/b' } }, {}, { c: { url: '/c' } }])
  assert.deepEqual([...f.rows.keys()], ['c'])
})

test('401 waits for a token, then sends it', async () => {
  let token = ''
  let asked = 0
  const s = script([
    { status: 401, body: { error: { code: 'UNAUTHORIZED', message: 'admin token required' } } },
    { body: [upToDate], headers: { 'electric-handle': 'h1', 'electric-offset': '1_0', 'electric-up-to-date': '' } },
  ])
  const { f } = follow(s, {
    token: () => token,
    onUnauthorized: (x) => { asked++; assert.equal(x.state, 'unauthorized'); token = 'secret'; setTimeout(() => x.retry(), 1) },
  })
  f.start()
  await done(f)
  assert.equal(asked, 1)
  assert.deepEqual(s.requests.map((r) => r.auth), [undefined, 'Bearer secret', 'Bearer secret'])
})

test('a table the server does not serve is unavailable, not retried', async () => {
  const s = script([{ status: 400, body: { error: { code: 'INVALID_REQUEST', message: 'table: not served' } } }])
  const { f } = follow(s)
  f.start()
  await done(f)
  assert.equal(f.state, 'unavailable')
  assert.match(f.error, /INVALID_REQUEST/)
  assert.equal(s.requests.length, 1)
})
