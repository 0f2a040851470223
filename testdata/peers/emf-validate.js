// Validates EMF lines two ways and prints one verdict per line as JSON.
// 1. ajv against testdata/emf/schema.json (written from the EMF specification), plus the
//    specification's rules a schema cannot express: every dimension and metric reference names
//    a root member, dimension targets are strings, metric targets are numbers or arrays of at
//    most 100 numbers, and the line is a single JSON object.
// 2. AWS's aws-embedded-metrics library as a second opinion: the same namespace, dimension sets,
//    metrics, units, timestamp and properties are put into its MetricsContext and serialized by
//    its LogSerializer; the result must equal the line as a JSON value.
// Usage: node emf-validate.js <node_modules> <schema.json> < lines.json > verdicts.json
// lines.json: ["<line>", ...]; verdicts.json: [{"errors": ["..."]}, ...] (empty errors: valid).
'use strict';
const [modules, schemaPath] = process.argv.slice(2);
const Ajv = require(`${modules}/ajv`);
const emf = require(`${modules}/aws-embedded-metrics/lib/logger/MetricsContext`);
const { LogSerializer } = require(`${modules}/aws-embedded-metrics/lib/serializers/LogSerializer`);
const { isDeepStrictEqual } = require('util');
const validate = new Ajv({ allErrors: true, strict: true }).compile(JSON.parse(require('fs').readFileSync(schemaPath, 'utf8')));

function check(line) {
  const errors = [];
  let doc;
  try {
    doc = JSON.parse(line);
  } catch (e) {
    return [`not JSON: ${e.message}`];
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) return ['not a JSON object'];
  if (!validate(doc)) {
    for (const e of validate.errors) errors.push(`schema: ${e.instancePath} ${e.message}`);
    return errors;
  }
  for (const d of doc._aws.CloudWatchMetrics) {
    for (const set of d.Dimensions) {
      for (const k of set) {
        if (typeof doc[k] !== 'string') errors.push(`dimension ${k}: target is ${JSON.stringify(doc[k])}, want a string member`);
      }
    }
    for (const m of d.Metrics) {
      const v = doc[m.Name];
      const ok = typeof v === 'number' || (Array.isArray(v) && v.length <= 100 && v.every((x) => typeof x === 'number'));
      if (!ok) errors.push(`metric ${m.Name}: target is ${JSON.stringify(v)}, want a number or up to 100 numbers`);
    }
  }
  if (errors.length) return errors;

  // Second opinion: what AWS's library writes for the same content. Its setters also validate
  // (names, units, dimension values, a timestamp within CloudWatch's accepted range) and throw.
  try {
    errors.push(...secondOpinion(doc));
  } catch (e) {
    errors.push(`aws-embedded-metrics refuses it: ${e.message}`);
  }
  return errors;
}

function secondOpinion(doc) {
  const d = doc._aws.CloudWatchMetrics[0];
  const ctx = emf.MetricsContext.empty();
  ctx.setNamespace(d.Namespace);
  ctx.setTimestamp(doc._aws.Timestamp);
  ctx.setDimensions(d.Dimensions.map((set) => Object.fromEntries(set.map((k) => [k, doc[k]]))), false);
  const named = new Set(d.Dimensions.flat().concat(d.Metrics.map((m) => m.Name), ['_aws']));
  for (const [k, v] of Object.entries(doc)) if (!named.has(k)) ctx.setProperty(k, v);
  for (const m of d.Metrics) ctx.putMetric(m.Name, doc[m.Name], m.Unit);
  const theirs = new LogSerializer().serialize(ctx).map((s) => JSON.parse(s));
  // The library lists metric definitions in its own order (a heap); their order has no meaning.
  const byName = (x) => { for (const d of x._aws.CloudWatchMetrics) d.Metrics.sort((a, b) => (a.Name < b.Name ? -1 : 1)); return x; };
  if (doc._aws.CloudWatchMetrics.length !== 1 || theirs.length !== 1 || !isDeepStrictEqual(byName(theirs[0]), byName(structuredClone(doc)))) {
    return [`aws-embedded-metrics writes ${JSON.stringify(theirs)} for this content`];
  }
  return [];
}

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (c) => { input += c; });
process.stdin.on('end', () => {
  process.stdout.write(JSON.stringify(JSON.parse(input).map((line) => ({ errors: check(line) }))));
});
