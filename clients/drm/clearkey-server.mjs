#!/usr/bin/env node
// A ClearKey licence server for tests and the demo: answers W3C EME ClearKey
// licence requests with the content keys of clients/drm/content/keys.json.
// Node 20+, no dependencies, listens on 127.0.0.1 only. Not for production:
// it hands a key to anyone who sends the configured header.
//
//   node clients/drm/clearkey-server.mjs [--port 8081] [--path /clearkey]
//        [--keys clients/drm/content/keys.json] [--require-header 'X-Licence-Auth: secret']
//
// The exchange (W3C Encrypted Media Extensions, "Clear Key": license request
// and license format):
//   POST {path}   body  {"kids":["<base64url key id>", …], "type":"temporary"}
//   200           body  {"keys":[{"kty":"oct","kid":"<base64url>","k":"<base64url key>"}, …], "type":"temporary"}
// Only the key ids it knows are answered; none known is 404. A body that is not
// such JSON (or over 64 KiB) is 400 (413). With a required header (the stand-in
// for a vendor's credential, which the licence gate adds), a request without
// it gets 403 and no key. Every request is recorded (`requests`), so a test can
// prove which requests reached it and which never did.

import http from 'node:http';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
/** The committed test content's keys. */
export const DEFAULT_KEYS_FILE = path.join(here, 'content', 'keys.json');
const MAX_BODY = 64 * 1024;

const b64url = (buf) => Buffer.from(buf).toString('base64url');
const fromB64url = (s) => Buffer.from(String(s).replace(/-/g, '+').replace(/_/g, '/'), 'base64');

/**
 * Reads a keys file: either `{periods: [{kid, key}, …]}` (clients/drm/content/keys.json)
 * or a JWK set `{keys: [{kty: "oct", kid, k}, …]}` (base64url).
 * @returns {Map<string, string>} key id (hex) → key (hex)
 */
export function loadKeys(file = DEFAULT_KEYS_FILE) {
  const j = JSON.parse(readFileSync(file, 'utf8'));
  const keys = new Map();
  for (const p of j.periods ?? []) keys.set(p.kid.toLowerCase(), p.key.toLowerCase());
  for (const k of j.keys ?? []) keys.set(fromB64url(k.kid).toString('hex'), fromB64url(k.k).toString('hex'));
  if (keys.size === 0) throw new Error(`${file}: no keys`);
  return keys;
}

/**
 * Parses a ClearKey license request (the `message` of a `license-request`).
 * @returns {string[]} key ids, hex
 * @throws {Error} when it is not one
 */
export function parseLicenceRequest(body) {
  let j;
  try {
    j = JSON.parse(Buffer.from(body).toString('utf8'));
  } catch {
    throw new Error('body is not JSON');
  }
  if (!j || !Array.isArray(j.kids) || j.kids.length === 0 || j.kids.length > 64) {
    throw new Error('expected {"kids": [1-64 base64url key ids]}');
  }
  return j.kids.map((k) => {
    if (typeof k !== 'string' || !/^[A-Za-z0-9_-]{22}$/.test(k)) throw new Error('a key id is not 16 bytes of base64url');
    return fromB64url(k).toString('hex');
  });
}

/**
 * Starts the server on 127.0.0.1.
 * @param {object} [opts]
 * @param {number} [opts.port=0] 0: any free port
 * @param {string} [opts.path='/clearkey']
 * @param {Map<string, string>} [opts.keys] default: the committed content's keys
 * @param {{name: string, value: string} | null} [opts.requireHeader] refuse (403) requests without it
 * @param {(r: object) => void} [opts.onRequest] called with every record
 * @returns {Promise<{url: string, port: number, requests: object[], close: () => Promise<void>}>}
 *   `requests`: one record per request: `{at, method, path, status, kids, keysSent, headers}`
 *   (`headers`: the request's headers, lower-case names)
 */
export function startClearKeyServer({ port = 0, path: route = '/clearkey', keys = loadKeys(), requireHeader = null, onRequest } = {}) {
  const requests = [];
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    const record = { at: Date.now(), method: req.method, path: url.pathname, status: 0, kids: [], keysSent: 0, headers: { ...req.headers } };
    const send = (status, body) => {
      record.status = status;
      requests.push(record);
      onRequest?.(record);
      res.writeHead(status, {
        'content-type': 'application/json',
        'cache-control': 'no-store',
        // For trying a player against it directly; behind the gate nobody but the gate calls it.
        'access-control-allow-origin': '*',
      });
      res.end(body === null ? '' : JSON.stringify(body));
    };
    if (req.method === 'GET' && url.pathname === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok\n');
      return;
    }
    if (req.method === 'OPTIONS') {
      res.writeHead(204, {
        'access-control-allow-origin': '*',
        'access-control-allow-methods': 'POST',
        'access-control-allow-headers': req.headers['access-control-request-headers'] ?? '',
        'access-control-max-age': '600',
      });
      res.end();
      return;
    }
    if (url.pathname !== route) return send(404, { error: 'not_found' });
    if (req.method !== 'POST') return send(405, { error: 'method_not_allowed' });
    const chunks = [];
    let size = 0;
    let tooBig = false;
    req.on('data', (c) => {
      size += c.length;
      if (size > MAX_BODY) tooBig = true;
      else chunks.push(c);
    });
    req.on('error', () => {});
    req.on('end', () => {
      if (tooBig) return send(413, { error: 'payload_too_large' });
      if (requireHeader && req.headers[requireHeader.name.toLowerCase()] !== requireHeader.value) {
        return send(403, { error: 'forbidden', message: `missing or wrong ${requireHeader.name}` });
      }
      let kids;
      try {
        kids = parseLicenceRequest(Buffer.concat(chunks));
      } catch (e) {
        return send(400, { error: 'bad_request', message: e.message });
      }
      record.kids = kids;
      const out = [];
      for (const kid of kids) {
        const key = keys.get(kid);
        if (key) out.push({ kty: 'oct', kid: b64url(Buffer.from(kid, 'hex')), k: b64url(Buffer.from(key, 'hex')) });
      }
      record.keysSent = out.length;
      if (out.length === 0) return send(404, { error: 'unknown_key', message: 'no key for these key ids' });
      send(200, { keys: out, type: 'temporary' });
    });
  });
  server.requestTimeout = 10000;
  server.headersTimeout = 5000;
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      const actual = server.address().port;
      resolve({
        url: `http://127.0.0.1:${actual}${route}`,
        port: actual,
        requests,
        close: () =>
          new Promise((r) => {
            server.closeAllConnections?.();
            server.close(() => r());
          }),
      });
    });
  });
}

// As a program.
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const argv = process.argv.slice(2);
  const opt = (name, dflt) => {
    const i = argv.indexOf(name);
    return i >= 0 && argv[i + 1] !== undefined ? argv[i + 1] : dflt;
  };
  if (argv.includes('-h') || argv.includes('--help')) {
    console.log("usage: node clients/drm/clearkey-server.mjs [--port 8081] [--path /clearkey] [--keys FILE] [--require-header 'Name: value']");
    process.exit(0);
  }
  const rh = opt('--require-header', null);
  let requireHeader = null;
  if (rh) {
    const i = rh.indexOf(':');
    if (i < 1) throw new Error("--require-header takes 'Name: value'");
    requireHeader = { name: rh.slice(0, i).trim(), value: rh.slice(i + 1).trim() };
  }
  const s = await startClearKeyServer({
    port: Number(opt('--port', '8081')),
    path: opt('--path', '/clearkey'),
    keys: loadKeys(opt('--keys', DEFAULT_KEYS_FILE)),
    requireHeader,
    onRequest: (r) => {
      const who = r.headers['x-streamcap-session'] ? ` session ${r.headers['x-streamcap-session']}` : '';
      console.log(`${new Date(r.at).toISOString()} ${r.method} ${r.path} ${r.status} kids=${r.kids.join(',') || '-'} keys=${r.keysSent}${who}`);
    },
  });
  console.log(`ClearKey licence server (test keys) on ${s.url}`);
}
