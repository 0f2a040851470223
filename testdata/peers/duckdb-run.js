// Runs SQL in DuckDB (npm @duckdb/node-api) and prints the rows of each query as JSON.
// Usage: node duckdb-run.js <node_modules> < input.json > output.json
// input.json:  {"setup": ["<sql>", ...], "queries": [{"name": "...", "sql": "...", "params": [...]}]}
// output.json: [{"name": "...", "rows": [{column: value}], "error": "..."}], in order. BIGINTs
// become numbers (the tests' values are far below 2^53); JSON values are their text.
'use strict';
const [modules] = process.argv.slice(2);
const { DuckDBInstance } = require(`${modules}/@duckdb/node-api`);

async function main(input) {
  const db = await DuckDBInstance.create(':memory:');
  const conn = await db.connect();
  for (const sql of input.setup) await conn.run(sql);
  const out = [];
  for (const q of input.queries) {
    try {
      const reader = await conn.runAndReadAll(q.sql, q.params && q.params.length ? q.params : undefined);
      const rows = reader.getRowObjectsJS().map((r) => Object.fromEntries(Object.entries(r).map(([k, v]) => [k, typeof v === 'bigint' ? Number(v) : v])));
      out.push({ name: q.name, rows });
    } catch (e) {
      out.push({ name: q.name, error: e.message });
    }
  }
  return out;
}

let text = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (c) => { text += c; });
process.stdin.on('end', () => {
  main(JSON.parse(text)).then(
    (out) => process.stdout.write(JSON.stringify(out)),
    (e) => { process.stderr.write(`duckdb: ${e.stack || e}\n`); process.exit(1); });
});
