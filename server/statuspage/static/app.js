// The status page: one shape follower per table, rendered into the tables
// of index.html whenever a shape changes (and every second, for the
// relative times). Text only: every value goes in through textContent.
import { ShapeFollower } from './shape.js'

const SHAPE_URL = new URL('../v1/shape', import.meta.url).href
const TOKEN_KEY = 'pullwake.adminToken'
const MAX_ENTITIES = 300
const MAX_WAKES = 50
const MAX_EXPIRED = 20
const LEAK_GRACE_MS = 5000

// runners and runner_runtime_diagnostics (liveness, once a runner has
// heartbeated) join on the runner id; entities and entity_dispatch_state
// (the active claim) on the entity URL.
const tables = ['runners', 'runner_runtime_diagnostics', 'entities', 'entity_dispatch_state', 'consumer_claims', 'wakes']
const followers = {}

const token = () => sessionStorage.getItem(TOKEN_KEY) || ''

for (const table of tables) {
  followers[table] = new ShapeFollower({
    url: SHAPE_URL,
    table,
    token,
    onChange: scheduleRender,
    onState: scheduleRender,
    onUnauthorized: askForToken,
  })
}

// ---- auth ----

const authForm = document.getElementById('auth')
const authError = document.getElementById('auth-error')

function askForToken(f) {
  authForm.hidden = false
  authError.textContent = token() ? `The token was refused (${f.error}).` : ''
  document.getElementById('token').focus()
}

authForm.addEventListener('submit', (ev) => {
  ev.preventDefault()
  const input = document.getElementById('token')
  sessionStorage.setItem(TOKEN_KEY, input.value.trim())
  input.value = ''
  authForm.hidden = true
  for (const f of Object.values(followers)) f.retry()
})

// ---- time ----

// parseTime reads PostgreSQL's text form of a timestamptz
// ("2026-12-07 12:39:35.123456+00"), an ISO 8601 one, or milliseconds since
// the epoch (the entities shape's int8 times); NaN when empty.
function parseTime(text) {
  if (!text) return NaN
  if (/^\d+$/.test(text)) return Number(text)
  const m = /^(\d{4}-\d\d-\d\d)[ T](\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d(?::?\d\d)?)?$/.exec(text)
  if (!m) return Date.parse(text)
  const frac = m[3] ? m[3].slice(0, 4) : ''
  let zone = m[4] || 'Z'
  if (/^[+-]\d\d$/.test(zone)) zone += ':00'
  else if (/^[+-]\d{4}$/.test(zone)) zone = zone.slice(0, 3) + ':' + zone.slice(3)
  return Date.parse(`${m[1]}T${m[2]}${frac}${zone}`)
}

// serverNow is the server's clock as the shape answers' Date headers tell it.
function serverNow() {
  return Date.now() + (followers.runners.serverSkewMs || 0)
}

function span(ms) {
  const s = Math.round(Math.abs(ms) / 1000)
  if (s < 60) return `${s} s`
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`
  return `${Math.floor(s / 86400)} d`
}

function ago(text, now) {
  const t = parseTime(text)
  if (Number.isNaN(t)) return '—'
  return t <= now ? `${span(now - t)} ago` : `in ${span(t - now)}`
}

function remaining(text, now) {
  const t = parseTime(text)
  if (Number.isNaN(t)) return { text: '—', passed: false }
  return t > now ? { text: `${span(t - now)} left`, passed: false } : { text: `passed ${span(now - t)} ago`, passed: true }
}

// ---- DOM ----

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag)
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v
    else if (k === 'data') Object.assign(e.dataset, v)
    else e.setAttribute(k, v)
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c ?? ''))
  return e
}

const badge = (text, cls = text) => el('span', { class: `badge ${cls}` }, text)
const td = (content, cls) => el('td', cls ? { class: cls } : {}, content)

function fill(section, rows, emptyText, extra = 0) {
  const sec = document.getElementById(section)
  const tbody = sec.querySelector('tbody')
  const cols = sec.querySelectorAll('thead th').length
  const f = sectionFollower[section]
  let note = emptyText
  if (f && f.state === 'unavailable') note = `not served by this server (${f.error})`
  else if (f && !f.upToDate) note = 'loading…'
  if (rows.length === 0) rows = [el('tr', {}, el('td', { class: 'empty', colspan: String(cols) }, note))]
  if (extra > 0) rows.push(el('tr', {}, el('td', { class: 'empty', colspan: String(cols) }, `… and ${extra} more`)))
  tbody.replaceChildren(...rows)
}

const sectionFollower = {
  runners: followers.runners,
  entities: followers.entities,
  wakes: followers.wakes,
  attention: followers.consumer_claims,
}

// ---- render ----

let renderTimer = null
function scheduleRender() {
  if (renderTimer === null) renderTimer = setTimeout(render, 30)
}
setInterval(scheduleRender, 1000)

const byKey = (follower, field) => {
  const m = new Map()
  for (const row of follower.rows.values()) m.set(row[field], row)
  return m
}

function livenessOf(runner, now) {
  const lease = parseTime(runner.liveness_lease_expires_at)
  if (Number.isNaN(lease)) return 'offline'
  return lease > now ? 'online' : 'expired'
}

function render() {
  renderTimer = null
  const now = serverNow()
  const runners = [...followers.runners.rows.values()].sort((a, b) => String(a.id).localeCompare(String(b.id)))
  const liveness = byKey(followers.runner_runtime_diagnostics, 'runner_id')
  const entities = [...followers.entities.rows.values()]
  const dispatch = byKey(followers.entity_dispatch_state, 'entity_url')
  const claims = [...followers.consumer_claims.rows.values()]
  const wakes = [...followers.wakes.rows.values()]

  // Active claims per runner: the claims shape when served, else the dispatch slots.
  const activeByRunner = new Map()
  const active = followers.consumer_claims.state === 'unavailable'
    ? [...dispatch.values()].filter((d) => d.active_consumer_id).map((d) => ({ runner_id: d.active_runner_id }))
    : claims.filter((c) => c.status === 'active')
  for (const c of active) activeByRunner.set(c.runner_id, (activeByRunner.get(c.runner_id) || 0) + 1)

  // Runners.
  let online = 0
  fill('runners', runners.map((runner) => {
    const r = { ...runner, ...liveness.get(runner.id) }
    const live = livenessOf(r, now)
    if (live === 'online') online++
    const lease = remaining(r.liveness_lease_expires_at, now)
    return el('tr', { data: { runner: r.id } },
      td(el('span', {}, el('code', {}, r.id), r.label ? el('span', { class: 'muted' }, ` ${r.label}`) : '')),
      td(r.kind || '—'),
      td(badge(r.admin_status || '—')),
      td(badge(live), 'liveness'),
      td(ago(r.last_seen_at, now)),
      td(lease.text, lease.passed ? 'error' : ''),
      td(String(activeByRunner.get(r.id) || 0)))
  }), 'no runner has registered')

  // Entities: the busy ones first, then the most recently changed.
  const rank = { running: 0, stopping: 1, idle: 2, stopped: 3 }
  entities.sort((a, b) => (rank[a.status] ?? 9) - (rank[b.status] ?? 9) ||
    (parseTime(b.updated_at) || 0) - (parseTime(a.updated_at) || 0))
  let running = 0
  for (const e of entities) if (e.status === 'running') running++
  fill('entities', entities.slice(0, MAX_ENTITIES).map((e) => {
    const d = dispatch.get(e.url) || {}
    const lease = d.active_consumer_id ? remaining(d.active_lease_expires_at, now) : { text: '—', passed: false }
    const claim = d.active_consumer_id
      ? el('span', {}, el('code', {}, `${d.active_consumer_id}/${d.active_epoch}`), el('span', { class: 'muted' }, ` on ${d.active_runner_id}`))
      : el('span', { class: 'muted' }, d.outstanding_wake_id ? `queued ${d.outstanding_wake_id}` : 'none')
    const offsets = d.entity_url ? `${Number(d.acked_offset)} / ${Number(d.last_sent_offset)}` : '—'
    return el('tr', { data: { entity: e.url } },
      td(el('code', {}, e.url)),
      td(badge(e.status), 'status'),
      td(e.runner_id || el('span', { class: 'muted' }, 'any')),
      td(claim, 'claim'),
      td(lease.text, lease.passed ? 'error' : ''),
      td(offsets),
      td(ago(e.updated_at, now)))
  }), 'no entity yet', Math.max(0, entities.length - MAX_ENTITIES))

  // Claims needing attention.
  const named = new Set([...dispatch.values()].filter((d) => d.active_consumer_id).map((d) => `${d.active_consumer_id}/${d.active_epoch}`))
  const dispatchKnown = followers.entity_dispatch_state.upToDate
  const attention = []
  for (const c of claims) {
    if (c.status !== 'active') continue
    const passed = parseTime(c.lease_expires_at) <= now
    // Two shapes can be a moment apart: a claim counts as leaked once no
    // dispatch slot has named it for LEAK_GRACE_MS after it was claimed.
    const leaked = dispatchKnown && !named.has(`${c.consumer_id}/${c.epoch}`) &&
      now - parseTime(c.claimed_at) > LEAK_GRACE_MS
    if (passed || leaked) attention.push({ problem: leaked ? 'leaked' : 'lease passed', cls: leaked ? 'leaked' : 'expired', c })
  }
  const expired = claims.filter((c) => c.status === 'expired')
    .sort((a, b) => (parseTime(b.updated_at) || 0) - (parseTime(a.updated_at) || 0)).slice(0, MAX_EXPIRED)
  for (const c of expired) attention.push({ problem: 'expired', cls: 'expired', c })
  const needing = attention.filter((a) => a.problem !== 'expired').length
  fill('attention', attention.map(({ problem, cls, c }) => el('tr', { data: { claim: `${c.consumer_id}/${c.epoch}` } },
    td(badge(problem, cls)),
    td(el('code', {}, `${c.consumer_id}/${c.epoch}`)),
    td(el('code', {}, c.entity_url)),
    td(c.runner_id),
    td(ago(c.lease_expires_at, now)),
    td(ago(c.updated_at, now)))), 'none: every active claim is live and held by its entity')

  // Recent wakes.
  wakes.sort((a, b) => (parseTime(b.created_at) || 0) - (parseTime(a.created_at) || 0) || String(b.wake_id).localeCompare(String(a.wake_id)))
  const queued = wakes.filter((w) => w.status === 'queued').length
  fill('wakes', wakes.slice(0, MAX_WAKES).map((w) => el('tr', { data: { wake: w.wake_id } },
    td(el('code', {}, w.wake_id)),
    td(el('code', {}, w.entity_url)),
    td(w.runner_id || el('span', { class: 'muted' }, 'any')),
    td(badge(w.status), 'status'),
    td(w.consumer_id ? `${w.consumer_id}/${w.epoch}` : '—'),
    td(ago(w.created_at, now)),
    td(ago(w.finished_at, now)))), 'no wake yet', Math.max(0, wakes.length - MAX_WAKES))

  for (const [section, count] of [['runners', runners.length], ['entities', entities.length], ['wakes', wakes.length], ['attention', needing]]) {
    document.querySelector(`#${section} .count`).textContent = `(${count})`
  }
  document.getElementById('summary').textContent =
    `${runners.length} runners (${online} online) · ${entities.length} entities (${running} running) · ` +
    `${queued} queued wakes · ${needing} claims need attention`
  document.getElementById('shapes').replaceChildren(...tables.map((t) => {
    const f = followers[t]
    return el('li', { class: f.state, title: f.error || f.state, data: { shape: t, state: f.state } }, `${t}: ${f.state}`)
  }))
}

for (const f of Object.values(followers)) f.start()
render()
