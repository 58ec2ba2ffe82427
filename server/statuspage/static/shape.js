// A follower of one shape over Electric's HTTP sync protocol, the part of
// it the status page needs (see the package doc of server/statuspage):
//
//   GET {url}?table=T&offset=-1            the initial rows, in chunks
//   GET {url}?table=T&handle=H&offset=O    the next chunk, until up-to-date
//   ... &live=true&cursor=C                then long-poll for changes
//
// Each answer is a JSON array of messages: {key, value, headers:
// {operation: insert|update|delete}} (an update carries the changed
// columns) or {headers: {control: up-to-date|must-refetch|snapshot-end}};
// its electric-handle, electric-offset and electric-cursor headers say
// where to read next. A 409, or a must-refetch message, means the shape's
// log is gone: drop every row and start over at offset -1 on the handle
// the answer names. Values stay the text the server sent (null for NULL).

export class ShapeFollower {
  // opts: {url, table, columns?, where?, token: () => string, onChange(follower),
  //        onState(follower), onUnauthorized(follower)}
  constructor(opts) {
    this.opts = opts
    this.rows = new Map() // key -> row (column -> text)
    this.state = 'connecting' // connecting | syncing | live | unauthorized | error | unavailable
    this.error = ''
    this.serverSkewMs = 0 // server clock minus ours, from the Date header
    this.upToDate = false
    this.handle = null
    this.offset = '-1'
    this.cursor = null
    this.abort = null
    this.stopped = true
    this.wakeAuth = null // resolves when a new token is to be tried
  }

  start() {
    if (!this.stopped) return
    this.stopped = false
    this.loop()
  }

  stop() {
    this.stopped = true
    if (this.abort) this.abort.abort()
    if (this.wakeAuth) this.wakeAuth()
  }

  // retry is called after the token changed: a follower waiting for one
  // tries again at once, a live request is restarted with it.
  retry() {
    if (this.wakeAuth) this.wakeAuth()
    else if (this.abort) this.abort.abort()
  }

  requestURL() {
    const u = new URL(this.opts.url, globalThis.location?.href)
    u.searchParams.set('table', this.opts.table)
    if (this.opts.columns) u.searchParams.set('columns', this.opts.columns.join(','))
    if (this.opts.where) u.searchParams.set('where', this.opts.where)
    u.searchParams.set('offset', this.offset)
    if (this.handle) u.searchParams.set('handle', this.handle)
    if (this.upToDate) {
      u.searchParams.set('live', 'true')
      if (this.cursor) u.searchParams.set('cursor', this.cursor)
    }
    return u
  }

  setState(state, error = '') {
    if (this.state === state && this.error === error) return
    this.state = state
    this.error = error
    this.opts.onState?.(this)
  }

  refetch(handle) {
    this.rows.clear()
    this.handle = handle || null
    this.offset = '-1'
    this.cursor = null
    this.upToDate = false
    this.setState('syncing')
    this.opts.onChange?.(this)
  }

  async loop() {
    let backoff = 250
    while (!this.stopped) {
      const headers = {}
      const token = this.opts.token()
      if (token) headers.Authorization = `Bearer ${token}`
      this.abort = new AbortController()
      let res
      let body
      try {
        res = await fetch(this.requestURL(), { headers, signal: this.abort.signal, cache: 'no-store' })
        body = res.status === 204 ? '' : await res.text()
      } catch (e) {
        if (this.stopped) return
        if (e.name !== 'AbortError') {
          this.setState('error', `network: ${e.message}`)
          await sleep(backoff)
          backoff = Math.min(backoff * 2, 5000)
        }
        continue
      } finally {
        this.abort = null
      }
      const date = Date.parse(res.headers.get('date') || '')
      if (!Number.isNaN(date)) this.serverSkewMs = date - Date.now()

      if (res.status === 401 || res.status === 403) {
        this.setState('unauthorized', errorMessage(body, res.status))
        this.opts.onUnauthorized?.(this)
        await new Promise((resolve) => { this.wakeAuth = resolve })
        this.wakeAuth = null
        continue
      }
      if (res.status === 409) {
        this.refetch(res.headers.get('electric-handle'))
        continue
      }
      if (!res.ok) {
        // A table the server does not serve stays unavailable: no retry loop.
        if (res.status === 400 || res.status === 404) {
          this.setState('unavailable', errorMessage(body, res.status))
          return
        }
        this.setState('error', errorMessage(body, res.status))
        await sleep(backoff)
        backoff = Math.min(backoff * 2, 5000)
        continue
      }
      backoff = 250
      this.handle = res.headers.get('electric-handle') || this.handle
      this.offset = res.headers.get('electric-offset') || this.offset
      this.cursor = res.headers.get('electric-cursor') || this.cursor
      let messages = []
      if (body) {
        try {
          messages = JSON.parse(body)
        } catch (e) {
          this.setState('error', `bad answer: ${e.message}`)
          await sleep(backoff)
          continue
        }
      }
      let changed = false
      let refetch = false
      for (const m of Array.isArray(messages) ? messages : []) {
        const h = m.headers || {}
        if (h.control === 'must-refetch') { refetch = true; break }
        if (h.control === 'up-to-date') { this.upToDate = true; continue }
        if (h.control) continue
        if (h.operation === 'insert') this.rows.set(m.key, { ...m.value })
        else if (h.operation === 'update') this.rows.set(m.key, { ...this.rows.get(m.key), ...m.value })
        else if (h.operation === 'delete') this.rows.delete(m.key)
        else continue
        changed = true
      }
      if (refetch) {
        this.refetch(res.headers.get('electric-handle'))
        continue
      }
      if (res.headers.has('electric-up-to-date')) this.upToDate = true
      this.setState(this.upToDate ? 'live' : 'syncing')
      if (changed) this.opts.onChange?.(this)
    }
  }
}

function errorMessage(body, status) {
  try {
    const e = JSON.parse(body)
    if (e && e.error) return `${status} ${e.error.code || ''}: ${e.error.message || ''}`.trim()
  } catch {}
  return `HTTP ${status}`
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}
