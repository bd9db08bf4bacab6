'use strict'
// The minimal WeChat mini-program host the WeChat build (lib/index.js) needs under Node: a
// global `wx` whose storage is in memory and whose wx.request does real HTTP. wx.request
// follows the mini-program documentation (PROTOCOL.md §2): method defaults to GET; an object
// `data` is JSON-encoded for POST/PUT (query string for GET); `content-type` defaults to
// application/json; with dataType 'json' the reply is JSON-parsed when it can be; success
// fires for every HTTP status, fail only when no reply arrived.
const { exchange } = require('./wire.cjs')

function query (data) {
  if (data == null || typeof data !== 'object') return ''
  const params = new URLSearchParams()
  for (const [k, v] of Object.entries(data)) {
    params.append(k, typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v))
  }
  const text = params.toString()
  return text ? `?${text}` : ''
}

function request ({ url, method = 'GET', data, header = {}, dataType = 'json', timeout = 60000, success, fail, complete }) {
  const verb = String(method).toUpperCase()
  const headers = { ...header }
  if (!Object.keys(headers).some((k) => k.toLowerCase() === 'content-type')) {
    headers['content-type'] = 'application/json'
  }
  let target = url
  let body = null
  if (verb === 'GET') {
    target += query(data)
  } else if (data !== undefined) {
    body = typeof data === 'string' ? data : JSON.stringify(data)
  }
  exchange({ method: verb, url: target, headers, body, timeoutMs: timeout }, (err, res) => {
    if (err) {
      const failure = { errMsg: `request:fail ${err.message}` }
      if (fail) fail(failure)
      if (complete) complete(failure)
      return
    }
    let parsed = res.body
    if (dataType === 'json') {
      try { parsed = JSON.parse(res.body) } catch { /* not JSON: wx.request hands over the text */ }
    }
    const reply = { data: parsed, statusCode: res.status, header: res.headers, cookies: [], errMsg: 'request:ok' }
    if (success) success(reply)
    if (complete) complete(reply)
  })
}

function load () {
  const storage = new Map()
  const later = (fn, value) => { if (fn) queueMicrotask(() => fn(value)) }
  const wx = {
    request,
    getStorageSync: (key) => (storage.has(key) ? storage.get(key) : ''),
    setStorageSync: (key, value) => { storage.set(key, value) },
    getStorage ({ key, success, fail }) {
      if (storage.has(key)) later(success, { data: storage.get(key), errMsg: 'getStorage:ok' })
      else later(fail, { errMsg: 'getStorage:fail data not found' })
    },
    setStorage ({ key, data, success }) {
      storage.set(key, data)
      later(success, { errMsg: 'setStorage:ok' })
    },
    getNetworkType ({ success }) { later(success, { networkType: 'wifi' }) },
    getSystemInfo ({ success }) { later(success, wx.getSystemInfoSync()) },
    getSystemInfoSync: () => ({ platform: 'devtools', SDKVersion: '3.0.0', version: '8.0.0' }),
    getAccountInfoSync: () => ({ miniProgram: { appId: 'wx0000000000000000', envVersion: 'develop' } }),
    login ({ fail }) { later(fail, { errMsg: 'login:fail not available in this shim' }) }
  }
  globalThis.wx = wx
  // The bundle's UMD wrapper evaluates `window` (then exports through module.exports); the
  // mini-program runtime defines it, Node does not.
  globalThis.window = globalThis
  // The WeChat build calls a global regeneratorRuntime (its async functions are compiled to
  // generators), which the mini-program base library provides; Node needs the same package.
  globalThis.regeneratorRuntime = require('regenerator-runtime')
  return { BaaS: require('minapp-sdk/lib/index.js'), storage }
}

module.exports = { load }
