// The bare Node anchor: node:http calling the seed's helloWorld in-process, nothing else.
// HELLO_JS names the function file; the reply is the envelope the engine sends.
const http = require('node:http')
const hello = require(process.env.HELLO_JS)

const server = http.createServer((req, res) => {
  const chunks = []
  req.on('data', (c) => chunks.push(c))
  req.on('end', () => {
    let body
    try {
      body = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}')
    } catch {
      res.writeHead(400, { 'Content-Type': 'application/json' })
      res.end('{"error_msg":"bad JSON"}')
      return
    }
    hello.main({ data: body.data || {} }, (err, data) => {
      const reply = err ? { code: 1, data: null, error: { message: String(err) } } : { code: 0, data, error: {} }
      res.writeHead(200, { 'Content-Type': 'application/json' })
      res.end(JSON.stringify(reply))
    })
  })
})
server.listen(0, '127.0.0.1', () => {
  console.log(`listening on http://127.0.0.1:${server.address().port}`)
})
