// The functions-framework anchor: Google's framework serves the seed's helloWorld over HTTP.
// HELLO_JS names the function file; the reply is the envelope the engine sends.
const hello = require(process.env.HELLO_JS)

exports.helloWorld = (req, res) => {
  const event = { data: (req.body && req.body.data) || {} }
  hello.main(event, (err, data) => {
    res.json(err ? { code: 1, data: null, error: { message: String(err) } } : { code: 0, data, error: {} })
  })
}
