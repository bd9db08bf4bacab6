'use strict'
// Runs the official minapp-sdk bundle against a local engine and reports each step.
//
//   node tests/js/compat.cjs <engine url> <client id> <web|wechat> <scenario> [username password]
//
// Scenarios: anonymous (anonymousLogin, then invoke), login (username login, then invoke in
// every form, then logout and invoke again), register (BaaS.auth.register, then invoke),
// lottery (BaaS.auth.register, then two draws of a `lottery` function that uses the
// in-function BaaS: the draws' results as steps draw-0 and draw-1), calls (a user registers
// or logs in, then invokes the functions a JSON list names, one step each:
//   ... calls <username> <password> <register|login> '[{"step", "function", "data"}]').
//
// stdout carries one JSON object per line: {"step", "ok": true, "value"} for a resolved step,
// {"step", "ok": false, "error": {...}} for a rejected one, {"wire": {...}} for each HTTP
// exchange the SDK made, and {"done": true} last. Any failure of the harness itself (bad
// arguments, a step over its deadline) goes to stderr with exit status 2.
//
// Both builds run unchanged; only the host is shimmed (shims/). The web build (lib/web.js) is
// the primary proof: just its transport, XMLHttpRequest, is stood in for, so request headers,
// JSON encoding and status handling are all the bundle's own axios code. The WeChat build
// (lib/index.js) needs wx.request emulated, so it is the secondary proof; it is kept because
// its error mapping differs (a 404 becomes "404: not found").

const STEP_TIMEOUT_MS = 15000

function usage (message) {
  process.stderr.write(`compat.cjs: ${message}\n` +
    'usage: node compat.cjs <engine url> <client id> <web|wechat> <anonymous|login|register|lottery|calls> [username password [register|login calls-json]]\n')
  process.exit(2)
}

const [url, clientId, build, scenario, username, password, how, callsJson] = process.argv.slice(2)
if (!url || !/^http:\/\/127\.0\.0\.1:\d+\/?$/.test(url)) usage(`the engine url must be http://127.0.0.1:<port>, got ${JSON.stringify(url)}`)
if (!clientId) usage('the client id is missing')
if (build !== 'web' && build !== 'wechat') usage(`the build must be web or wechat, got ${JSON.stringify(build)}`)
if (!['anonymous', 'login', 'register', 'lottery', 'calls'].includes(scenario)) usage(`unknown scenario ${JSON.stringify(scenario)}`)
if (scenario !== 'anonymous' && !(username && password)) usage(`scenario ${scenario} needs a username and a password`)

let calls = []
if (scenario === 'calls') {
  if (how !== 'register' && how !== 'login') usage(`calls needs register or login, got ${JSON.stringify(how)}`)
  try { calls = JSON.parse(callsJson) } catch { usage('calls needs a JSON list of {step, function, data}') }
  if (!Array.isArray(calls)) usage('calls needs a JSON list of {step, function, data}')
}

function emit (record) {
  process.stdout.write(JSON.stringify(record) + '\n')
}

const wire = require('./shims/wire.cjs')
// Credentials stay out of the output (it ends up in test reports): the Authorization value
// and any "token" or "password" field of a JSON body are replaced by placeholders.
function redactBody (text) {
  if (text == null) return text
  let value
  try { value = JSON.parse(text) } catch { return text }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) return text
  const secret = ['token', 'password'].filter((key) => key in value)
  if (secret.length === 0) return text // byte for byte what was sent
  for (const key of secret) value[key] = `<${key}>`
  return JSON.stringify(value)
}

wire.onExchange((exchange) => {
  const headers = { ...exchange.request.headers }
  for (const name of Object.keys(headers)) {
    if (name.toLowerCase() === 'authorization') headers[name] = headers[name].replace(/ .*/, ' <token>')
  }
  const request = { ...exchange.request, headers, body: redactBody(exchange.request.body) }
  emit({ wire: { ...exchange, request, reply: redactBody(exchange.reply) } })
})
const { BaaS } = require(`./shims/${build}.cjs`).load()

// An SDK rejection as plain data. HError is a plain Error with own `code` and `message`
// (PROTOCOL.md §4.2); `own_keys` lets the test check that shape too.
function describeError (err) {
  if (!(err instanceof Error)) return { constructor: typeof err, message: String(err) }
  return { constructor: err.constructor.name, code: err.code ?? null, message: err.message, own_keys: Object.keys(err).sort() }
}

// A step's value as JSON: the SDK resolves invoke with the reply body; login steps resolve
// with a CurrentUser, of which only the id and the anonymous flag matter here.
async function step (name, run, summarize = (value) => value) {
  let timer
  const deadline = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`step ${name} did not settle within ${STEP_TIMEOUT_MS} ms`)), STEP_TIMEOUT_MS)
  })
  try {
    const value = await Promise.race([Promise.resolve().then(run), deadline])
    emit({ step: name, ok: true, value: summarize(value) ?? null })
  } catch (err) {
    if (err instanceof Error && err.message.startsWith(`step ${name} did not settle`)) throw err
    emit({ step: name, ok: false, error: describeError(err) })
  } finally {
    clearTimeout(timer)
  }
}

function currentUser (user) {
  return { id: user.id ?? user.get('id'), anonymous: user.get('_anonymous') ?? null }
}

const hello = { name: 'allen' }

async function invokeAll () {
  await step('invoke', () => BaaS.invoke('helloWorld', hello))
  await step('invokeFunction', () => BaaS.invokeFunction('helloWorld', hello))
  await step('invoke-no-params', () => BaaS.invoke('helloWorld'))
  await step('invoke-async', () => BaaS.invoke('helloWorld', hello, false))
  await step('invoke-unknown', () => BaaS.invoke('noSuchFunction', hello))
}

async function main () {
  BaaS.init(clientId, { host: url })
  if (scenario === 'anonymous') {
    await step('anonymousLogin', () => BaaS.auth.anonymousLogin(), currentUser)
    await step('invoke', () => BaaS.invoke('helloWorld', hello))
  } else if (scenario === 'lottery') {
    await step('register', () => BaaS.auth.register({ username, password }), currentUser)
    await step('draw-0', () => BaaS.invoke('lottery', { seed: 0 }))
    await step('draw-1', () => BaaS.invoke('lottery', { seed: 1 }))
  } else if (scenario === 'calls') {
    const enter = how === 'register' ? () => BaaS.auth.register({ username, password }) : () => BaaS.auth.login({ username, password })
    await step(how, enter, currentUser)
    for (const call of calls) await step(call.step, () => BaaS.invoke(call.function, call.data))
  } else if (scenario === 'register') {
    await step('register', () => BaaS.auth.register({ username, password }), currentUser)
    await step('invoke', () => BaaS.invoke('helloWorld', hello))
  } else {
    await step('login', () => BaaS.auth.login({ username, password }), currentUser)
    await invokeAll()
    await step('logout', () => BaaS.auth.logout(), (res) => ({ status: res.status ?? res.statusCode, data: res.data }))
    await step('invoke-after-logout', () => BaaS.invoke('helloWorld', hello))
  }
  emit({ done: true })
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`compat.cjs: ${err && err.stack ? err.stack : err}\n`)
    process.exit(2)
  }
)
