'use strict'
// One plain HTTP exchange over Node's http module, shared by the XMLHttpRequest shim (web
// build) and the wx.request shim (WeChat build). It adds nothing of its own: the request goes
// out with exactly the method, headers and body the SDK produced, and every exchange is
// reported (emit) so the Python test can see what the official SDK put on the wire.
const http = require('node:http')

let emit = () => {}

function onExchange (fn) {
  emit = fn
}

// callback(err, {status, statusText, headers: {lower-case name: value}, body: string})
function exchange ({ method, url, headers, body, timeoutMs }, callback) {
  const target = new URL(url)
  if (target.protocol !== 'http:' || target.hostname !== '127.0.0.1') {
    // Only the engine under test: anything else is a bug in the test setup.
    callback(new Error(`refusing to send a request to ${url}: only http://127.0.0.1 is allowed`))
    return
  }
  const payload = body == null ? null : Buffer.from(body, 'utf8')
  const sent = { method, path: target.pathname + target.search, headers: { ...headers }, body: body == null ? null : String(body) }
  // A fresh connection per request (agent: false): nothing stays open when the harness ends.
  const req = http.request(target, { method, headers, agent: false, timeout: timeoutMs })
  let settled = false
  const settle = (err, res) => {
    if (settled) return
    settled = true
    emit({ request: sent, status: res ? res.status : null, reply: res ? res.body : null, error: err ? String(err.message) : null })
    callback(err, res)
  }
  req.on('timeout', () => req.destroy(new Error(`no reply within ${timeoutMs} ms`)))
  req.on('error', (err) => settle(err))
  req.on('response', (res) => {
    const chunks = []
    res.on('data', (chunk) => chunks.push(chunk))
    res.on('error', (err) => settle(err))
    res.on('end', () => settle(null, {
      status: res.statusCode,
      statusText: res.statusMessage || '',
      headers: res.headers,
      body: Buffer.concat(chunks).toString('utf8')
    }))
  })
  req.end(payload)
}

module.exports = { exchange, onExchange }
