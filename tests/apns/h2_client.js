// h2_client.js — an independent HTTP/2 client (Node's built-in http2 module)
// that sends the APNs test cases to the mock over one session and prints
// one JSON line per case: {"name", "status", "reason", "apns_id", "timestamp"}.
// Used by test_apns_mock.c to check the mock answers a client that is not
// ours exactly as our client expects.
//
// usage: node h2_client.js URL CA CERT KEY TOPIC TOKEN DEAD_TOKEN
'use strict';
const http2 = require('http2');
const fs = require('fs');

const [url, ca, cert, key, topic, token, dead] = process.argv.slice(2);
const tls = url.startsWith('https:');
const session = http2.connect(url, tls ? {
  ca: fs.readFileSync(ca), cert: fs.readFileSync(cert), key: fs.readFileSync(key),
} : {});
session.on('error', (e) => { console.log(JSON.stringify({ error: e.message })); process.exit(3); });

const id = '0f4f1a7e-8a77-4f5c-9d3e-2b1c0d9e8f7a';
const body = JSON.stringify({ mdm: 'magic-node' });
const base = { ':method': 'POST', ':path': '/3/device/' + token, 'apns-topic': topic,
  'apns-push-type': 'mdm', 'apns-priority': '10' };
const cases = [
  ['ok', { 'apns-id': id }, body],
  ['no_topic', { 'apns-topic': undefined }, body],
  ['wrong_topic', { 'apns-topic': 'com.example.other' }, body],
  ['bad_token', { ':path': '/3/device/1234' }, body],
  ['get', { ':method': 'GET' }, null],
  ['bad_path', { ':path': '/3/other/' + token }, body],
  ['alert_type', { 'apns-push-type': 'alert' }, body],
  ['no_push_type', { 'apns-push-type': undefined }, body],
  ['bad_priority', { 'apns-priority': '7' }, body],
  ['bad_expiration', { 'apns-expiration': 'soon' }, body],
  ['bad_id', { 'apns-id': 'nope' }, body],
  ['empty', {}, ''],
  ['too_large', {}, JSON.stringify({ mdm: 'x'.repeat(5000) })],
  ['duplicate', { 'apns-topic': [topic, topic] }, body],
  ['dead', { ':path': '/3/device/' + dead }, body],
];

let pending = cases.length;
const results = {};
for (const [name, change, payload] of cases) {
  const headers = Object.assign({}, base, change);
  for (const k of Object.keys(headers)) if (headers[k] === undefined) delete headers[k];
  const req = session.request(headers, { endStream: payload === null });
  let status = 0, apnsId = '', data = '';
  req.on('response', (h) => { status = h[':status']; apnsId = h['apns-id'] || ''; });
  req.setEncoding('utf8');
  req.on('data', (d) => { data += d; });
  req.on('end', () => {
    let reason = '', timestamp = 0;
    if (data) { const j = JSON.parse(data); reason = j.reason || ''; timestamp = j.timestamp || 0; }
    results[name] = { name, status, reason, apns_id: apnsId, timestamp };
    if (--pending === 0) {
      for (const [n] of cases) console.log(JSON.stringify(results[n]));
      session.close();
    }
  });
  req.on('error', (e) => { results[name] = { name, error: e.message }; if (--pending === 0) session.close(); });
  if (payload !== null) req.end(payload);
}
