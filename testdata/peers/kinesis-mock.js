'use strict'
// Launches kinesis-mock (npm kinesis-local, a Scala.js build) bound to 127.0.0.1 only, on ports
// chosen by the kernel, and prints one line per listening socket:
//   LISTENING tls 127.0.0.1:<port>
//   LISTENING plain 127.0.0.1:<port>
// main.js hard-codes the wildcard host and takes fixed ports from the environment, so instead of
// editing the 8 MB bundle we wrap net.Server.prototype.listen: every listen call is rebound to
// 127.0.0.1 on port 0, and the sentinel ports set below tell the two servers apart.
//
// Usage: node kinesis-mock.js <path to kinesis-local/main.js>
var net = require('net')

var TLS_SENTINEL = 1, PLAIN_SENTINEL = 2
process.env.KINESIS_MOCK_TLS_PORT = String(TLS_SENTINEL)
process.env.KINESIS_MOCK_PLAIN_PORT = String(PLAIN_SENTINEL)

var mainJS = process.argv[2]
if (!mainJS) {
  console.error('usage: node kinesis-mock.js <path to kinesis-local/main.js>')
  process.exit(2)
}

// The TLS certificate is looked up relative to the working directory by default.
if (!process.env.KINESIS_MOCK_CERT_PATH) {
  process.env.KINESIS_MOCK_CERT_PATH = require('path').join(require('path').dirname(mainJS), 'server.json')
}

// The test harness holds our stdin open; when it closes (the test binary died without cleaning
// up) the emulator must not live on.
process.stdin.on('end', function () { process.exit(0) })
process.stdin.resume()

var origListen = net.Server.prototype.listen
net.Server.prototype.listen = function () {
  var args = Array.prototype.slice.call(arguments)
  var cb = typeof args[args.length - 1] === 'function' ? args.pop() : null
  var requested = typeof args[0] === 'object' && args[0] !== null ? args[0].port : args[0]
  var role = Number(requested) === TLS_SENTINEL ? 'tls' : Number(requested) === PLAIN_SENTINEL ? 'plain' : null
  if (role === null) {
    console.error('kinesis-mock.js: unexpected listen(' + JSON.stringify(args) + '); refusing to bind')
    process.exit(3)
  }
  var server = this
  return origListen.call(this, { port: 0, host: '127.0.0.1' }, function () {
    var a = server.address()
    if (!a || a.address !== '127.0.0.1') {
      console.error('kinesis-mock.js: bound to ' + JSON.stringify(a) + ', not 127.0.0.1')
      process.exit(3)
    }
    process.stdout.write('LISTENING ' + role + ' 127.0.0.1:' + a.port + '\n')
    if (cb) cb.apply(this, arguments)
  })
}

require(mainJS)
