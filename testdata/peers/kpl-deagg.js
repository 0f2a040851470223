// De-aggregates KPL records with awslabs' aws-kinesis-agg, checksums verified.
// Usage: node kpl-deagg.js <node_modules/aws-kinesis-agg> < records.json > users.json
// records.json: [{"partitionKey": "...", "data": "<base64>", "sequenceNumber": "..."}]
// users.json:   [{"partitionKey": "...", "data": "<base64>", "subSequenceNumber": n}], in order.
'use strict';
const agg = require(process.argv[2]);
let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (c) => { input += c; });
process.stdin.on('end', () => {
  const out = [];
  for (const rec of JSON.parse(input)) {
    agg.deaggregateSync(rec, true, (err, users) => {
      if (err) {
        process.stderr.write(`deaggregate ${rec.sequenceNumber}: ${err.message || err}\n`);
        process.exit(1);
      }
      for (const u of users) {
        out.push({ partitionKey: u.partitionKey, data: u.data, subSequenceNumber: u.subSequenceNumber });
      }
    });
  }
  process.stdout.write(JSON.stringify(out));
});
