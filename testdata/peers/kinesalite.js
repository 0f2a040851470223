'use strict'
// Launches kinesalite with in-memory storage, bound to 127.0.0.1 on a port chosen by the kernel,
// and prints "LISTENING plain 127.0.0.1:<port>" once it accepts connections. kinesalite's own
// CLI listens on every interface, hence this launcher.
//
// Usage: node kinesalite.js <path to node_modules/kinesalite>
var kinesaliteDir = process.argv[2]
if (!kinesaliteDir) {
  console.error('usage: node kinesalite.js <path to node_modules/kinesalite>')
  process.exit(2)
}

// The test harness holds our stdin open; when it closes (the test binary died without cleaning
// up) the emulator must not live on.
process.stdin.on('end', function () { process.exit(0) })
process.stdin.resume()

var server = require(kinesaliteDir)({
  createStreamMs: 0,
  deleteStreamMs: 0,
  updateStreamMs: 0,
  shardLimit: 100,
})
server.on('error', function (err) {
  console.error('kinesalite.js: ' + err.stack)
  process.exit(3)
})
server.listen(0, '127.0.0.1', function () {
  var a = server.address()
  process.stdout.write('LISTENING plain ' + a.address + ':' + a.port + '\n')
})
