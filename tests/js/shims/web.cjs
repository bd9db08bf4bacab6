'use strict'
// The minimal browser a web build (lib/web.js) needs under Node. Its UMD wrapper reads
// `window`, its storage is localStorage, and its axios 0.21.4 picks the XMLHttpRequest
// adapter: the bundle maps axios's Node http adapter to the XHR one, so under Node it still
// calls `new XMLHttpRequest()`. Everything else (headers, JSON encoding and parsing, status
// handling) is the bundle's own code.
const { exchange } = require('./wire.cjs')

class MemoryStorage {
  constructor () { this._items = new Map() }
  get length () { return this._items.size }
  key (i) { return Array.from(this._items.keys())[i] ?? null }
  getItem (k) { return this._items.has(String(k)) ? this._items.get(String(k)) : null }
  setItem (k, v) { this._items.set(String(k), String(v)) }
  removeItem (k) { this._items.delete(String(k)) }
  clear () { this._items.clear() }
}

// The parts of XMLHttpRequest axios's xhr adapter uses: open, setRequestHeader, send, abort,
// timeout, onloadend/onerror/ontimeout/onabort, status, statusText, responseText,
// getAllResponseHeaders. Like a browser, it reports a failed connection as onerror with
// status 0 (axios then rejects with "Network Error" and no response).
class XMLHttpRequest {
  constructor () {
    this.readyState = 0
    this.status = 0
    this.statusText = ''
    this.responseText = ''
    this.response = ''
    this.responseURL = ''
    this.timeout = 0
    this.withCredentials = false
    this.responseType = ''
    this.onloadend = null
    this.onerror = null
    this.ontimeout = null
    this.onabort = null
    this.upload = { addEventListener () {} }
    this._headers = {}
    this._responseHeaders = {}
    this._aborted = false
  }

  open (method, url, async = true) {
    if (!async) throw new Error('this XMLHttpRequest shim supports async requests only')
    this._method = method
    this._url = url
    this.readyState = 1
  }

  setRequestHeader (name, value) {
    this._headers[name] = String(value)
  }

  addEventListener () {}

  getAllResponseHeaders () {
    return Object.entries(this._responseHeaders)
      .map(([k, v]) => `${k}: ${Array.isArray(v) ? v.join(', ') : v}`)
      .join('\r\n')
  }

  getResponseHeader (name) {
    const v = this._responseHeaders[String(name).toLowerCase()]
    return v === undefined ? null : String(v)
  }

  abort () {
    this._aborted = true
    if (this.onabort) this.onabort()
  }

  send (body) {
    exchange({
      method: this._method,
      url: this._url,
      headers: this._headers,
      body: body ?? null,
      // axios's default timeout is 0 (none, as in a browser); the shim still bounds each
      // request so a silent server fails the step instead of hanging the test.
      timeoutMs: this.timeout || 30000
    }, (err, res) => {
      if (this._aborted) return
      this.readyState = 4
      if (err) {
        if (this.onerror) this.onerror(err)
        if (this.onloadend) this.onloadend()
        return
      }
      this.status = res.status
      this.statusText = res.statusText
      this.responseText = res.body
      this.response = res.body
      this.responseURL = this._url
      this._responseHeaders = res.headers
      if (this.onloadend) this.onloadend()
    })
  }
}

function load () {
  // In a browser `window` is the global object itself (core-js inside the bundle reads
  // window.Symbol, window.Math ...), so the shim adds the browser's names to globalThis.
  const localStorage = new MemoryStorage()
  const navigator = { userAgent: 'minapp-async-js-compat (Node.js)', product: 'Gecko' }
  const names = {
    window: globalThis,
    self: globalThis,
    localStorage,
    location: new URL('http://127.0.0.1/index.html'),
    navigator, // Node 20 has a read-only navigator getter: redefine it
    XMLHttpRequest,
    addEventListener () {},
    removeEventListener () {}
  }
  for (const [name, value] of Object.entries(names)) {
    Object.defineProperty(globalThis, name, { value, configurable: true, writable: true })
  }
  return { BaaS: require('minapp-sdk/lib/web.js'), storage: localStorage }
}

module.exports = { load }
