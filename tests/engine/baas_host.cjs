'use strict'
// Test host for baas.cjs: runs one function file with the real `BaaS` global, whose
// call(op, payload) travels as a JSON line on stdout to the Python test; the answer comes back
// as a JSON line on stdin. Then the function's result (or error) is the last line.
// argv: <baas.cjs path> <function file> <event JSON>
const readline = require('readline')

const { createBaaS } = require(process.argv[2])
const fnFile = process.argv[3]
const event = JSON.parse(process.argv[4])

const pending = new Map()
let lastId = 0
const send = (msg) => process.stdout.write(JSON.stringify(msg) + '\n')
const input = readline.createInterface({ input: process.stdin })
input.on('line', (line) => {
  const msg = JSON.parse(line)
  const resolve = pending.get(msg.id)
  pending.delete(msg.id)
  resolve(msg.answer)
})

function call (op, payload) {
  return new Promise((resolve) => {
    const id = ++lastId
    pending.set(id, resolve)
    send({ t: 'call', id, op, payload })
  })
}

global.BaaS = createBaaS(call)
Promise.resolve()
  .then(() => require(fnFile).main(event))
  .then(
    (result) => send({ t: 'result', result: result === undefined ? null : result }),
    (err) => send({ t: 'error', error: { name: err && err.name, code: err && err.code, message: String(err && err.message), json: err && typeof err.toJSON === 'function' ? err.toJSON() : null } })
  )
  .finally(() => input.close())
