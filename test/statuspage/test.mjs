// The status page in a real browser: Debian's Chromium, headless, driven by
// playwright-core (which never downloads a browser). The page asks for the
// admin token, then shows the runners and entities the REST API made; a
// message sent to an entity, claimed and finished changes the entity's
// status on the page without a reload, and the page keeps following
// across a server restart (its shapes' must-refetch).
//
// Run by internal/clienttest (TestStatusPageBrowser), which starts
// `pullwake serve` and passes:
//   PULLWAKE_URL           the server's base URL
//   PULLWAKE_ADMIN_TOKEN   its admin token
//   CHROMIUM               the browser binary (scripts/chromium.sh)
//   SCREENSHOT             where to write a PNG of the page (optional)
// It prints "@@restart" and waits for "restarted" on stdin while the Go
// test restarts the server process.
import assert from 'node:assert/strict'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { chromium } from 'playwright-core'

const BASE = process.env.PULLWAKE_URL
const ADMIN = process.env.PULLWAKE_ADMIN_TOKEN
const CHROMIUM = process.env.CHROMIUM
if (!BASE || !ADMIN || !CHROMIUM) throw new Error('PULLWAKE_URL, PULLWAKE_ADMIN_TOKEN and CHROMIUM must be set')
const WAIT_MS = Number(process.env.PAGE_WAIT_MS || 15000)

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

// A small fleet to look at: three runners (two heartbeating, one
// disabled), an entity type, five entities, one of them running.
await rest('POST', '/_electric/entity-types', { name: 'chat', description: 'chat rooms' })
const runners = {}
for (const [id, label] of [['worker-a', 'eu-west'], ['worker-b', 'eu-west'], ['worker-c', 'us-east']]) {
  runners[id] = (await rest('POST', '/_electric/runners', { id, label, kind: 'echo' })).runner_token
}
await rest('POST', '/_electric/runners/worker-a/heartbeat', { lease_ms: 120000 }, runners['worker-a'])
await rest('POST', '/_electric/runners/worker-b/heartbeat', { lease_ms: 120000 }, runners['worker-b'])
await rest('POST', '/_electric/runners/worker-c/disable')
for (const id of ['lobby', 'support', 'random']) await rest('PUT', `/entities/chat/${id}`, { runner_id: 'worker-a' })
await rest('PUT', '/entities/chat/ops', { runner_id: 'worker-b' })
await rest('PUT', '/entities/chat/archive', {})
await rest('DELETE', '/entities/chat/archive')
await rest('POST', '/entities/chat/ops', { payload: { text: 'deploy?' } })
await rest('POST', '/_electric/runners/worker-b/claim', {}, runners['worker-b'])
// A claim left to lapse (the server runs no expiry sweep in this test).
await rest('POST', '/entities/chat/random', { payload: { text: 'lost' } })
await rest('POST', '/_electric/runners/worker-a/claim', { lease_ttl_ms: 1000 }, runners['worker-a'])

const userDataDir = mkdtempSync(join(tmpdir(), 'pullwake-chromium-'))
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: CHROMIUM,
  headless: true, // --headless
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
  viewport: { width: 1180, height: 900 },
})
try {
  const page = context.pages()[0] || (await context.newPage())
  const problems = []
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`))
  // A failed request (the 401 before the token, a connection refused while
  // the server restarts) is traffic the page handles; a script error or a
  // 5xx is not.
  page.on('console', (m) => {
    if (m.type() === 'error' && !/^Failed to load resource: (the server responded with a status of 4|net::ERR_CONNECTION_REFUSED)/.test(m.text())) {
      problems.push(`console: ${m.text()}`)
    }
  })
  page.on('response', (r) => { if (r.status() >= 500) problems.push(`${r.status()} ${r.url()}`) })
  let navigations = 0
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) navigations++ })

  await page.goto(`${BASE}/status/`)
  // The server has an admin token: the page asks for it.
  await page.locator('#auth').waitFor({ state: 'visible', timeout: WAIT_MS })
  await page.fill('#token', ADMIN)
  await page.click('#auth button')
  await page.locator('#auth').waitFor({ state: 'hidden', timeout: WAIT_MS })
  console.log('ok  the page asked for the admin token')

  const status = (url) => page.locator(`#entities tr[data-entity="${url}"] td.status`)
  // waitStatus waits for the entity's row to show want; it logs how long
  // the page took from the call (a figure, never an assertion).
  const waitStatus = async (url, want, step) => {
    const t0 = Date.now()
    try {
      await page.waitForFunction(([u, w]) =>
        document.querySelector(`#entities tr[data-entity="${u}"] td.status`)?.textContent === w,
      [url, want], { timeout: WAIT_MS })
    } catch (e) {
      const got = await status(url).textContent({ timeout: 100 }).catch(() => '(no row)')
      const shapes = await page.locator('#shapes').textContent().catch(() => '')
      throw new Error(`${step}: ${url} shows ${JSON.stringify(got)}, want ${JSON.stringify(want)} (shapes: ${shapes})`)
    }
    console.log(`ok  ${step}: ${url} is ${want} (shown ${Date.now() - t0} ms after the call)`)
  }

  await waitStatus('/chat/ops', 'running', 'initial rows')
  await waitStatus('/chat/lobby', 'idle', 'initial rows')
  await waitStatus('/chat/archive', 'stopped', 'initial rows')
  await page.waitForFunction(() =>
    document.querySelector('#runners tr[data-runner="worker-a"] td.liveness')?.textContent === 'online', null, { timeout: WAIT_MS })
  console.log('ok  worker-a is online')
  await page.waitForFunction(() => [...document.querySelectorAll('#attention tr[data-entity="/chat/random"] td')]
    .some((td) => td.textContent === 'lease passed'), null, { timeout: WAIT_MS })
  console.log('ok  the lapsed claim of /chat/random needs attention')
  const navigationsBefore = navigations

  // A message sent through the REST API, claimed by the entity's runner:
  // the page shows the entity running, then idle once the claim is done.
  const sent = await rest('POST', '/entities/chat/lobby', { payload: { text: 'hello' } })
  await page.waitForFunction((wakeRow) => document.querySelector(wakeRow)?.textContent === 'queued',
    '#wakes tr[data-entity="/chat/lobby"] td.status', { timeout: WAIT_MS }).catch(async () => {
    throw new Error(`the wake of the message sent is not shown queued: ${await page.locator('#wakes').textContent()}`)
  })
  console.log('ok  message sent: its wake is queued')
  const wake = await rest('POST', '/_electric/runners/worker-a/claim', {}, runners['worker-a'])
  assert.equal(wake?.entity_url, '/chat/lobby')
  await waitStatus('/chat/lobby', 'running', 'message sent and claimed')
  await rest('POST', wake.callback.replace(/^https?:\/\/[^/]+/, ''), { epoch: wake.epoch, done: true,
    acks: [{ stream: wake.stream_path, offset: sent.offset }] }, wake.claim_token)
  await waitStatus('/chat/lobby', 'idle', 'claim done')
  if (process.env.SCREENSHOT) {
    // The running entity again, for the picture.
    await rest('POST', '/entities/chat/support', { payload: { text: 'help' } })
    await rest('POST', '/_electric/runners/worker-a/claim', {}, runners['worker-a'])
    await waitStatus('/chat/support', 'running', 'screenshot')
    await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true })
    console.log(`ok  screenshot in ${process.env.SCREENSHOT}`)
  }
  // A server restart ends every shape handle: the page's followers get a
  // 409, start over and keep following, still without a reload. The new
  // process's first sweep expires the lapsed claim: its row goes.
  const rl = createInterface({ input: process.stdin })
  console.log('@@restart')
  const answer = await rl[Symbol.asyncIterator]().next()
  rl.close()
  if (answer.done || answer.value.trim() !== 'restarted') throw new Error(`restart: the driver answered ${JSON.stringify(answer.value)}`)
  await page.waitForFunction(() => !document.querySelector('#attention tr[data-entity="/chat/random"]'), null, { timeout: WAIT_MS })
  console.log('ok  after a server restart the expired claim left the attention list')
  await rest('POST', '/_electric/runners/worker-b/disable')
  await page.waitForFunction(() =>
    document.querySelector('#runners tr[data-runner="worker-b"] td.admin')?.textContent === 'disabled', null, { timeout: WAIT_MS })
  console.log('ok  after a server restart the page follows again: worker-b disabled')
  await rest('POST', '/_electric/runners/worker-b/enable')
  assert.equal(navigations, navigationsBefore, 'the page reloaded')
  console.log('ok  no reload')

  assert.deepEqual(problems, [], 'the page logged errors')
} finally {
  await context.close()
  rmSync(userDataDir, { recursive: true, force: true })
}
console.log('statuspage: ok')
