'use strict'
// Node.js worker for the local engine: runs one cloud function, one job at a time.
//
// argv: <message fd> <jobs fd> <function file> <function name>
// Two private pipes, never stdin/stdout (stdin is /dev/null), so user code can neither read a
// job request nor corrupt a reply. The engine writes JSON lines to the jobs fd:
// {"t":"job","j":<job id>,"e":<event>} and answers to BaaS calls {"t":"baas","id":n,"a":answer}.
// The worker writes JSON lines to the message fd: {"t":"ready"}, {"t":"log","j":id,"s":"<line>"},
// {"t":"result","j":id,"r":envelope[,"recycle":true]}, {"t":"recycle"} and BaaS calls
// {"t":"baas","j":<job id>,"id":n,"op":"table.find","p":payload}.
// `.cjs` so that a package.json with "type": "module" above us cannot turn this into ESM.

const fs = require('fs')
const net = require('net')
const util = require('util')
const { AsyncLocalStorage } = require('async_hooks')

const MSG_FD = Number(process.argv[2])
const JOBS_FD = Number(process.argv[3])
const FILE = process.argv[4]
const NAME = process.argv[5]
const MAX_LOG_MESSAGE = 1024 * 1024 // the engine caps the whole log at 1 MiB anyway

const jobContext = new AsyncLocalStorage()
let currentJob = null // the job being run, so output from outside any async context lands there
let userModule = null

function writeLine (text) {
  // Synchronous on a blocking pipe: a message is never interleaved or lost on exit.
  const buf = Buffer.from(text + '\n', 'utf8')
  let off = 0
  while (off < buf.length) off += fs.writeSync(MSG_FD, buf, off, buf.length - off)
}

function send (message) { writeLine(JSON.stringify(message)) }

function jobId () {
  const store = jobContext.getStore()
  if (store !== undefined) return store.id
  return currentJob === null ? null : currentJob.id
}

function emit (level, text) {
  if (text.length > MAX_LOG_MESSAGE) text = text.slice(0, MAX_LOG_MESSAGE) + ' [message cut]'
  send({ t: 'log', j: jobId(), s: new Date().toISOString() + ' ' + level + ' ' + text + '\n' })
}

// console.* -> the job log with the right level; raw stream writes are split into lines.
const LEVELS = { log: 'LOG', debug: 'LOG', info: 'INFO', warn: 'WARN', error: 'ERROR', trace: 'ERROR' }
for (const [method, level] of Object.entries(LEVELS)) {
  console[method] = function (...args) {
    let text = util.format(...args)
    if (method === 'trace') text = 'Trace: ' + text + '\n' + new Error().stack.split('\n').slice(2).join('\n')
    emit(level, text)
  }
}
console.dir = function (obj, options) { emit('LOG', util.inspect(obj, options)) }

function captureStream (stream, level) {
  let pending = ''
  stream.write = function (chunk, encoding, cb) {
    if (typeof encoding === 'function') { cb = encoding; encoding = undefined }
    pending += typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8')
    let nl
    while ((nl = pending.indexOf('\n')) !== -1) {
      emit(level, pending.slice(0, nl))
      pending = pending.slice(nl + 1)
    }
    if (typeof cb === 'function') process.nextTick(cb)
    return true
  }
  return function flush () {
    if (pending !== '') { emit(level, pending); pending = '' }
  }
}
const flushStdout = captureStream(process.stdout, 'LOG')
const flushStderr = captureStream(process.stderr, 'ERROR')

function describeError (err) {
  try {
    return describeErrorUnsafe(err)
  } catch (_) { // a throwing getter on the error object, say
    return { message: 'the function failed with an error that could not be read', stack: '', type: 'Error' }
  }
}

function describeErrorUnsafe (err) {
  if (err instanceof Error || (err !== null && typeof err === 'object' && 'message' in err)) {
    const type = err.constructor && err.constructor.name ? err.constructor.name : 'Error'
    return { message: String(err.message), stack: String(err.stack || ''), type }
  }
  // callback('some text') is documented; other non-Error values are described as best we can.
  // Decision: type "Error" for them, since the platform only documents Error objects and strings.
  let message
  if (typeof err === 'string') message = err
  else {
    try { message = JSON.stringify(err) } catch (_) { message = String(err) }
    if (message === undefined) message = String(err)
  }
  return { message, stack: '', type: 'Error' }
}

function finish (job, err, data, recycle = false) {
  if (job.done) return // a second callback, or a late one after a throw: ignored
  job.done = true
  flushStdout()
  flushStderr()
  const line = { t: 'result', j: job.id, r: null }
  if (err) line.r = { code: 1, data: null, error: describeError(err) }
  else line.r = { code: 0, data: data === undefined ? null : data, error: {} }
  // "recycle" rides on the result itself, so the engine knows before it reuses this worker.
  if (recycle) line.recycle = true
  let text
  try {
    text = JSON.stringify(line)
  } catch (e) { // a BigInt, a cycle, a throwing toJSON
    const reason = 'the cloud function\'s result is not JSON-serialisable: ' + e.message
    line.r = { code: 1, data: null, error: { message: reason, stack: '', type: e.constructor.name } }
    text = JSON.stringify(line)
  }
  if (currentJob === job) currentJob = null
  writeLine(text)
}

function loadMain () {
  if (userModule === null) userModule = require(FILE)
  const main = userModule && userModule.main
  if (typeof main !== 'function') {
    throw new TypeError('cloud function \'' + NAME + '\' does not export a main function (exports.main = ...)')
  }
  return main
}

// Decision: the job ends when the result is produced. The platform waits for the event loop
// to drain first, but its containers are frozen afterwards; here the worker stays warm, and
// output from work left running is attributed to its own (finished) job and dropped.
function runJob (request) {
  const job = { id: request.j, done: false }
  currentJob = job
  jobContext.run(job, () => {
    const callback = (err, data) => finish(job, err, data)
    let returned
    try {
      const main = loadMain()
      returned = main(request.e, callback)
      if (returned !== null && typeof returned === 'object' && typeof returned.then === 'function') {
        // async main: a value resolves the job; undefined is ignored (the platform then waits
        // for the callback or the time limit); a rejection fails it.
        returned.then(
          (value) => { if (value !== undefined) finish(job, null, value) },
          (err) => finish(job, err === undefined || err === null ? new Error(String(err)) : err)
        )
      } else if (returned !== undefined && main.length < 2) {
        // Decision: a plain `(event) => value` with no callback parameter returns its result.
        // Functions that take the callback may return anything (e.g. a timer) and it is ignored.
        finish(job, null, returned)
      }
    } catch (err) {
      finish(job, err === undefined || err === null ? new Error(String(err)) : err)
    }
  })
}

function failCurrent (err) {
  const store = jobContext.getStore()
  const job = store !== undefined ? store : currentJob
  // The process state is suspect after an uncaught error: the engine replaces this worker.
  if (job !== null && !job.done) {
    finish(job, err, undefined, true)
  } else {
    emit('ERROR', 'Uncaught ' + (err && err.stack ? err.stack : String(err)))
    send({ t: 'recycle' })
  }
}
process.on('uncaughtException', failCurrent)
process.on('unhandledRejection', failCurrent)

// -- the BaaS global: each call is a message to the engine, answered on the jobs pipe ---------

const pendingCalls = new Map() // call id -> resolve
let lastCallId = 0

function baasCall (op, payload) {
  return new Promise((resolve) => {
    const id = ++lastCallId
    let line
    try {
      line = JSON.stringify({ t: 'baas', j: jobId(), id, op, p: payload })
    } catch (e) { // a BigInt or a cycle in what the function passed
      resolve({ error: { code: 605, message: 'invalid argument: ' + op + ' payload is not JSON: ' + e.message } })
      return
    }
    pendingCalls.set(id, resolve)
    writeLine(line)
  })
}

global.BaaS = require('./baas.cjs').createBaaS(baasCall)

function onMessage (message) {
  if (message.t === 'baas') {
    const resolve = pendingCalls.get(message.id)
    if (resolve !== undefined) {
      pendingCalls.delete(message.id)
      resolve(message.a)
    }
  } else {
    runJob(message)
  }
}

let input = ''
const jobs = new net.Socket({ fd: JOBS_FD, readable: true, writable: false })
jobs.setEncoding('utf8')
jobs.on('data', (chunk) => {
  input += chunk
  let nl
  while ((nl = input.indexOf('\n')) !== -1) {
    const line = input.slice(0, nl)
    input = input.slice(nl + 1)
    if (line !== '') onMessage(JSON.parse(line))
  }
})
jobs.on('end', () => process.exit(0)) // the engine went away
jobs.on('error', () => process.exit(0))
send({ t: 'ready' })
