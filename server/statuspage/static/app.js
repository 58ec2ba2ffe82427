// The status page: one shape follower per table, rendered into the tables
// of index.html whenever a shape changes (and every second, for the
// relative times). Text only: every value goes in through textContent.
import { ShapeFollower } from './shape.js'

const SHAPE_URL = new URL('../v1/shape', import.meta.url).href
const TOKEN_KEY = 'pullwake.adminToken'
const MAX_ENTITIES = 300
const MAX_WAKES = 50
// Two shapes are read apart: an entity counts as running without a claim
// only once that has lasted GRACE_MS.
const GRACE_MS = 5000
// The Date header has whole seconds: a smaller skew is noise.
const MIN_SKEW_MS = 2000

// runners and runner_runtime_diagnostics (liveness, once a runner has
// heartbeated) join on the runner id; entities and entity_dispatch_state
// (the active claim, the outstanding wake) on the entity URL.
const tables = ['runners', 'runner_runtime_diagnostics', 'entities', 'entity_dispatch_state']
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
  const skew = followers.runners.serverSkewMs || 0
  return Date.now() + (Math.abs(skew) < MIN_SKEW_MS ? 0 : skew)
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
  if (Math.abs(now - t) < 1000) return 'just now'
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
  if (f && f.state === 'unavailable') note = `this server does not serve the shape it needs (${f.error})`
  else if (f && !f.upToDate) note = 'loading…'
  if (rows.length === 0) rows = [el('tr', {}, el('td', { class: 'empty', colspan: String(cols) }, note))]
  if (extra > 0) rows.push(el('tr', {}, el('td', { class: 'empty', colspan: String(cols) }, `… and ${extra} more`)))
  tbody.replaceChildren(...rows)
}

const sectionFollower = {
  runners: followers.runners,
  entities: followers.entities,
  wakes: followers.entity_dispatch_state,
  attention: followers.entity_dispatch_state,
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

// runnerOf is the runner an entity is pinned to: the first runner target
// of the entities shape's dispatch_policy (JSON text), "" for any.
function runnerOf(entity) {
  try {
    const p = typeof entity.dispatch_policy === 'string' ? JSON.parse(entity.dispatch_policy) : entity.dispatch_policy
    const t = (p?.targets || []).find((x) => x.type === 'runner')
    return t?.runnerId || ''
  } catch {
    return ''
  }
}

const claimOf = (d) => d.active_consumer_id ? `${d.active_consumer_id}/${d.active_epoch}` : ''

function render() {
  renderTimer = null
  const now = serverNow()
  const runners = [...followers.runners.rows.values()].sort((a, b) => String(a.id).localeCompare(String(b.id)))
  const liveness = byKey(followers.runner_runtime_diagnostics, 'runner_id')
  const entities = [...followers.entities.rows.values()]
  const dispatch = byKey(followers.entity_dispatch_state, 'entity_url')
  const slots = [...dispatch.values()]

  const activeByRunner = new Map()
  for (const d of slots) {
    if (d.active_consumer_id) activeByRunner.set(d.active_runner_id, (activeByRunner.get(d.active_runner_id) || 0) + 1)
  }

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
      td(badge(r.admin_status || '—'), 'admin'),
      td(badge(live), 'liveness'),
      td(ago(r.last_seen_at, now)),
      td(lease.text, lease.passed ? 'error' : ''),
      td(String(activeByRunner.get(r.id) || 0), 'active'))
  }), 'no runner has registered')

  // Entities: the busy ones first, then the most recently changed.
  const rank = { running: 0, stopping: 1, idle: 2, stopped: 3, killed: 4 }
  entities.sort((a, b) => (rank[a.status] ?? 9) - (rank[b.status] ?? 9) ||
    (parseTime(b.updated_at) || 0) - (parseTime(a.updated_at) || 0) || String(a.url).localeCompare(String(b.url)))
  let running = 0
  for (const e of entities) if (e.status === 'running') running++
  fill('entities', entities.slice(0, MAX_ENTITIES).map((e) => {
    const d = dispatch.get(e.url) || {}
    const lease = d.active_consumer_id ? remaining(d.active_lease_expires_at, now) : { text: '—', passed: false }
    const claim = d.active_consumer_id
      ? el('span', {}, el('code', {}, claimOf(d)), el('span', { class: 'muted' }, ` on ${d.active_runner_id}`))
      : el('span', { class: 'muted' }, 'none')
    const offsets = d.entity_url ? `${Number(d.acked_offset)} / ${Number(d.last_sent_offset)}` : '—'
    return el('tr', { data: { entity: e.url } },
      td(el('code', {}, e.url)),
      td(badge(e.status), 'status'),
      td(runnerOf(e) || el('span', { class: 'muted' }, 'any')),
      td(claim, 'claim'),
      td(lease.text, lease.passed ? 'error' : ''),
      td(offsets),
      td(ago(e.updated_at, now)))
  }), 'no entity yet', Math.max(0, entities.length - MAX_ENTITIES))

  // Claims needing attention: a lease that passed while the claim still
  // holds its entity (the sweeper has not expired it yet: within one
  // sweep interval that is normal, longer means no sweeper runs), and an
  // entity running without a claim (what the lifecycle rules forbid).
  const attention = []
  const byUrl = new Map(entities.map((e) => [e.url, e]))
  if (followers.entity_dispatch_state.upToDate) {
    for (const d of slots) {
      if (d.active_consumer_id && parseTime(d.active_lease_expires_at) <= now) {
        const e = byUrl.get(d.entity_url)
        attention.push({ problem: 'lease passed', cls: 'expired', url: d.entity_url, d, updated: e?.updated_at || '' })
      }
    }
    for (const e of entities) {
      const d = dispatch.get(e.url)
      if (e.status === 'running' && d && !d.active_consumer_id && now - parseTime(e.updated_at) > GRACE_MS) {
        attention.push({ problem: 'running without a claim', cls: 'leaked', url: e.url, d, updated: e.updated_at })
      }
    }
  }
  fill('attention', attention.map(({ problem, cls, url, d, updated }) => el('tr', { data: { entity: url } },
    td(badge(problem, cls)),
    td(el('code', {}, url)),
    td(d.active_consumer_id ? el('code', {}, claimOf(d)) : '—'),
    td(d.active_runner_id || '—'),
    td(d.active_consumer_id ? remaining(d.active_lease_expires_at, now).text : '—'),
    td(updated ? ago(updated, now) : '—'))), 'none: every active claim has a live lease')

  // Outstanding wakes: the consumer id of a claim is its wake's id.
  const wakes = slots.filter((d) => d.outstanding_wake_id)
    .sort((a, b) => (parseTime(b.updated_at) || 0) - (parseTime(a.updated_at) || 0) || String(a.entity_url).localeCompare(String(b.entity_url)))
  let queued = 0
  fill('wakes', wakes.slice(0, MAX_WAKES).map((d) => {
    const claimed = d.active_consumer_id === d.outstanding_wake_id
    if (!claimed) queued++
    return el('tr', { data: { wake: d.outstanding_wake_id, entity: d.entity_url } },
      td(el('code', {}, d.outstanding_wake_id)),
      td(el('code', {}, d.entity_url)),
      td(badge(claimed ? 'claimed' : 'queued'), 'status'),
      td(claimed ? d.active_runner_id : el('span', { class: 'muted' }, '—')),
      td(ago(d.last_released_at, now)),
      td(ago(d.last_completed_at, now)))
  }), 'none: no entity has work waiting', Math.max(0, wakes.length - MAX_WAKES))

  for (const [section, count] of [['runners', runners.length], ['entities', entities.length], ['wakes', wakes.length], ['attention', attention.length]]) {
    document.querySelector(`#${section} .count`).textContent = `(${count})`
  }
  document.getElementById('summary').textContent =
    `${runners.length} runners (${online} online) · ${entities.length} entities (${running} running) · ` +
    `${queued} queued wakes · ${attention.length} need attention`
  document.getElementById('shapes').replaceChildren(...tables.map((t) => {
    const f = followers[t]
    return el('li', { class: f.state, title: f.error || f.state, data: { shape: t, state: f.state } }, `${t}: ${f.state}`)
  }))
}

for (const f of Object.values(followers)) f.start()
render()
