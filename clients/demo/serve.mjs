#!/usr/bin/env node
// A tiny static server for the streamcap demo page, for development only.
// Node 20+, no dependencies, listens on 127.0.0.1 only.
//
//   node clients/demo/serve.mjs [--port 8000] [--api http://127.0.0.1:8080] [--licence-port 8081]
//
// Serves clients/demo/*, the player module (/streamcap-player.js), Shaka
// Player (/shaka-player.js, from clients/node_modules) and the encrypted test
// content (/content/, from clients/drm/content); starts the test ClearKey
// licence server (clients/drm/clearkey-server.mjs) on --licence-port (0: none),
// which gives keys only to requests carrying `X-Licence-Auth: secret-for-demo`,
// the header clients/demo/streamcap-demo.toml makes the gate add; and
// GET /grant?user=…&limit=…[&device&label&content&policy&poll] which shells
// out to `streamcap mint` with the DEV tenant (every STREAMCAP_* variable is
// dropped, so it can never mint for a real tenant): a stand-in for your
// backend's grant endpoint. The page calls the API on another origin (--api),
// so every call goes through CORS as in production.

import http from 'node:http';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { startClearKeyServer } from '../drm/clearkey-server.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const repoRoot = path.resolve(here, '..', '..');

const FILES = {
  '/': [path.join(here, 'index.html'), 'text/html; charset=utf-8'],
  '/index.html': [path.join(here, 'index.html'), 'text/html; charset=utf-8'],
  '/demo.js': [path.join(here, 'demo.js'), 'text/javascript; charset=utf-8'],
  '/demo.css': [path.join(here, 'demo.css'), 'text/css; charset=utf-8'],
  '/streamcap-player.js': [path.join(repoRoot, 'clients', 'js', 'streamcap-player.js'), 'text/javascript; charset=utf-8'],
  '/shaka-player.js': [path.join(repoRoot, 'clients', 'node_modules', 'shaka-player', 'dist', 'shaka-player.compiled.js'), 'text/javascript; charset=utf-8'],
};

/** The encrypted test content (clients/drm/content), served under /content/. */
export const CONTENT_DIR = path.join(repoRoot, 'clients', 'drm', 'content');
const CONTENT_TYPES = { '.mpd': 'application/dash+xml', '.mp4': 'video/mp4', '.m4s': 'video/mp4' };

/**
 * The file and type for a /content/ path: the manifest and the media segments
 * only (not keys.json: the keys are for the licence server).
 * @returns {[string, string] | null}
 */
export function contentFile(pathname) {
  const m = /^\/content\/((?:[A-Za-z0-9_-]+\/)*[A-Za-z0-9_-]+(\.[a-z0-9]+))$/.exec(pathname);
  if (!m || !CONTENT_TYPES[m[2]]) return null;
  return [path.join(CONTENT_DIR, ...m[1].split('/')), CONTENT_TYPES[m[2]]];
}

const NAME = /^[A-Za-z0-9._~-]{1,128}$/;
const POLICIES = new Set(['reject_new', 'evict_oldest', 'reject_new_device']);

function devEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('STREAMCAP_')) env[k] = v;
  return env;
}

function streamcapBin(bin) {
  const b = bin ?? process.env.STREAMCAP_BIN ?? path.join(repoRoot, 'target', 'debug', 'streamcap');
  return path.resolve(b);
}

/** Validates the /grant query and turns it into `streamcap mint` arguments. */
function mintArgs(q) {
  const user = q.get('user') ?? 'alice';
  if (!NAME.test(user)) throw new Error('user must be 1-128 of [A-Za-z0-9._~-]');
  const limit = Number(q.get('limit') ?? '2');
  if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new Error('limit must be 1-1000');
  const args = ['mint', '--user', user, '--limit', String(limit), '--valid-secs', '600'];
  const device = q.get('device');
  if (device) {
    if (!/^[\x20-\x7e]{1,128}$/.test(device)) throw new Error('device must be printable ASCII, 1-128');
    args.push('--device', device);
  }
  for (const [k, max] of [['label', 64], ['content', 128]]) {
    const v = q.get(k);
    if (v) {
      if (Buffer.byteLength(v) > max) throw new Error(`${k} is longer than ${max} bytes`);
      args.push(`--${k}`, v);
    }
  }
  const policy = q.get('policy');
  if (policy) {
    if (!POLICIES.has(policy)) throw new Error('unknown policy');
    args.push('--policy', policy);
  }
  const poll = q.get('poll');
  if (poll) {
    const p = Number(poll);
    if (!Number.isInteger(p) || p < 1 || p > 3600) throw new Error('poll must be 1-3600');
    args.push('--poll', String(p));
  }
  return args;
}

/** The credential the demo's licence server wants and streamcap-demo.toml makes the gate add. */
export const DEMO_LICENCE_HEADER = { name: 'X-Licence-Auth', value: 'secret-for-demo' };

/**
 * Starts the demo server on 127.0.0.1, and with `licencePort` (a number, 0:
 * any free port) the ClearKey licence server too.
 * @param {{port?: number, api?: string, bin?: string, licencePort?: number|null}} [opts]
 * @returns {Promise<{url: string, port: number, licence: {url: string, port: number, requests: object[]}|null,
 *   close: () => Promise<void>}>}
 */
export async function startDemoServer({ port = 0, api = 'http://127.0.0.1:8080', bin, licencePort = null } = {}) {
  const licence = licencePort === null || licencePort === undefined
    ? null
    : await startClearKeyServer({ port: licencePort, requireHeader: DEMO_LICENCE_HEADER });
  const exe = streamcapBin(bin);
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    const send = (status, type, body) => {
      res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store', 'x-content-type-options': 'nosniff' });
      res.end(body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, 'text/plain', 'GET only\n');
    try {
      if (url.pathname === '/config.json') {
        return send(200, 'application/json', JSON.stringify({ api }));
      }
      if (url.pathname === '/grant') {
        let args;
        try {
          args = mintArgs(url.searchParams);
        } catch (e) {
          return send(400, 'text/plain', `${e.message}\n`);
        }
        if (!existsSync(exe)) return send(500, 'text/plain', `streamcap binary not found at ${exe}\n`);
        execFile(exe, args, { env: devEnv(), timeout: 10000 }, (err, stdout, stderr) => {
          if (err) send(500, 'text/plain', `streamcap mint failed: ${stderr || err.message}\n`);
          else send(200, 'text/plain', stdout.trim());
        });
        return;
      }
      if (url.pathname === '/favicon.ico') return send(204, 'text/plain', '');
      const file = FILES[url.pathname] ?? contentFile(url.pathname);
      if (!file || !existsSync(file[0])) return send(404, 'text/plain', 'not found\n');
      send(200, file[1], await readFile(file[0]));
    } catch (e) {
      send(500, 'text/plain', `${e.message}\n`);
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      const actual = server.address().port;
      resolve({
        url: `http://127.0.0.1:${actual}`,
        port: actual,
        licence,
        close: async () => {
          await new Promise((r) => {
            server.closeAllConnections?.();
            server.close(() => r());
          });
          await licence?.close();
        },
      });
    });
  });
}

// As a program.
if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const argv = process.argv.slice(2);
  const opt = (name, dflt) => {
    const i = argv.indexOf(name);
    return i >= 0 && argv[i + 1] ? argv[i + 1] : dflt;
  };
  if (argv.includes('-h') || argv.includes('--help')) {
    console.log('usage: node clients/demo/serve.mjs [--port 8000] [--api http://127.0.0.1:8080] [--licence-port 8081] [--bin PATH]');
    process.exit(0);
  }
  const { url, licence } = await startDemoServer({
    port: Number(opt('--port', '8000')),
    api: opt('--api', 'http://127.0.0.1:8080'),
    bin: opt('--bin', undefined),
    licencePort: Number(opt('--licence-port', '8081')) || null,
  });
  if (licence) console.log(`ClearKey licence server (test keys) on ${licence.url}`);
  console.log(`streamcap demo (dev only) on ${url}/?user=alice&limit=2&label=Tab%201`);
  console.log(`open it in two or three tabs with different labels; API: ${opt('--api', 'http://127.0.0.1:8080')}`);
}
