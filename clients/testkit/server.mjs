// Test helpers shared by the player tests and the browser test: a real
// streamcap server in dev mode on free 127.0.0.1 ports, and grants from
// `streamcap mint`. Node 20+, no dependencies.
//
// The binary is $STREAMCAP_BIN, else <repo>/target/debug/streamcap
// (build it with `cargo build` first).

import { spawn, execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
/** The repository root (clients/ is one level below it). */
export const repoRoot = path.resolve(here, '..', '..');

/** The streamcap binary the tests run. */
export function streamcapBin() {
  const bin = process.env.STREAMCAP_BIN
    ? path.resolve(process.env.STREAMCAP_BIN)
    : path.join(repoRoot, 'target', 'debug', 'streamcap');
  if (!existsSync(bin)) {
    throw new Error(`streamcap binary not found at ${bin}: run \`cargo build\` or set STREAMCAP_BIN`);
  }
  return bin;
}

/** The environment without any STREAMCAP_* variable, so server and mint run in dev mode. */
export function devEnv() {
  const env = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (!k.startsWith('STREAMCAP_')) env[k] = v;
  }
  return env;
}

function tryPort(port) {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(port, '127.0.0.1', () => {
      const { port: actual } = srv.address();
      srv.close(() => resolve(actual));
    });
  });
}

/**
 * A TCP port on 127.0.0.1 that was free a moment ago: any (the system's
 * choice), or one of `CLIENTS_TEST_PORTS=LOW-HIGH` when that is set (for
 * machines where each user keeps to a range of ports).
 */
export async function freePort() {
  const range = /^(\d+)-(\d+)$/.exec(process.env.CLIENTS_TEST_PORTS ?? '');
  if (!range) return tryPort(0);
  const [lo, hi] = [Number(range[1]), Number(range[2])];
  for (let i = 0; i < 200; i++) {
    const port = lo + Math.floor(Math.random() * (hi - lo + 1));
    try {
      return await tryPort(port);
    } catch {
      // taken: try another
    }
  }
  throw new Error(`no free port in ${lo}-${hi}`);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `check` every 50 ms until it returns a truthy value or `ms` passes.
 * @returns {Promise<any>} the truthy value
 */
export async function eventually(check, ms = 5000, what = 'condition') {
  const until = Date.now() + ms;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() >= until) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(50);
  }
}

/**
 * Starts `streamcap serve`: in dev mode, or with a configuration file
 * (`config`: its path). With `port`/`adminPort` it reuses those (a restart on
 * the same address); otherwise it picks free ones. Resolves once /healthz
 * answers (within 15 s).
 */
export async function startServer({ port, adminPort, config, extraArgs = [] } = {}) {
  port ??= await freePort();
  adminPort ??= await freePort();
  const bin = streamcapBin();
  const child = spawn(
    bin,
    ['serve', ...(config ? ['--config', config] : []), '--listen', `127.0.0.1:${port}`, '--admin-listen', `127.0.0.1:${adminPort}`, ...extraArgs],
    { env: devEnv(), stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let log = '';
  const keep = (d) => {
    log = (log + d.toString()).slice(-20000);
  };
  child.stdout.on('data', keep);
  child.stderr.on('data', keep);
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  let dead = false;
  exited.then(() => {
    dead = true;
  });

  const server = {
    port,
    adminPort,
    baseUrl: `http://127.0.0.1:${port}`,
    adminUrl: `http://127.0.0.1:${adminPort}`,
    child,
    exited,
    log: () => log,
    /** SIGKILL: a crash, all state lost. */
    async crash() {
      if (!dead) child.kill('SIGKILL');
      await exited;
    },
    /** SIGTERM: a graceful stop (SIGKILL after 5 s). */
    async stop() {
      if (dead) return exited;
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
    /** The sum of a metric's samples whose line contains `filter` (e.g. `route="preflight"`); 0 when absent. */
    async metric(name, filter = '') {
      const text = await (await fetch(`${server.adminUrl}/metrics`)).text();
      let sum = 0;
      for (const line of text.split('\n')) {
        if ((line.startsWith(name + ' ') || line.startsWith(name + '{')) && line.includes(filter)) {
          sum += Number(line.trim().split(' ').pop());
        }
      }
      return sum;
    },
  };

  const until = Date.now() + 15000;
  for (;;) {
    if (dead) throw new Error(`streamcap exited during startup:\n${log}`);
    try {
      const r = await fetch(`${server.adminUrl}/healthz`);
      if (r.ok) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > until) {
      await server.crash();
      throw new Error(`streamcap did not become healthy within 15 s:\n${log}`);
    }
    await sleep(50);
  }
  return server;
}

/**
 * Mints a dev-tenant grant with `streamcap mint`.
 * @param {{user: string, limit?: number, device?: string, label?: string, content?: string,
 *          policy?: string, poll?: number, group?: string, groupLimit?: number, validSecs?: number}} o
 */
export function mint(o) {
  const args = ['mint', '--user', o.user, '--limit', String(o.limit ?? 2)];
  const opt = { device: '--device', label: '--label', content: '--content', policy: '--policy',
    poll: '--poll', group: '--group', groupLimit: '--group-limit', validSecs: '--valid-secs' };
  for (const [k, flag] of Object.entries(opt)) {
    if (o[k] !== undefined && o[k] !== null) args.push(flag, String(o[k]));
  }
  return new Promise((resolve, reject) => {
    execFile(streamcapBin(), args, { env: devEnv(), timeout: 10000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`streamcap mint failed: ${err.message}\n${stderr}`));
      else resolve(stdout.trim());
    });
  });
}

let seq = 0;
/** A user name unique to this process and call. */
export function uniqueUser(prefix = 'u') {
  seq += 1;
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${seq}`;
}

/** Lists a user's live sessions with a grant (plain fetch, no player). */
export async function listSessions(baseUrl, user, grant) {
  const r = await fetch(`${baseUrl}/v1/users/${user}/sessions`, { headers: { Authorization: `Bearer ${grant}` } });
  if (r.status !== 200) throw new Error(`list: ${r.status} ${await r.text()}`);
  return r.json();
}

/** The dev tenant's key (public, as in src/config.rs): a config with tenant "demo" and this key accepts `mint()`'s grants. */
export const DEV_TENANT_KEY = '64656d6f2d74656e616e742d6b65792d6e6f742d612d7365637265742d212121';

/** 64 random hex characters. */
export function randomKeyHex() {
  return Array.from(crypto.getRandomValues(new Uint8Array(32)), (b) => b.toString(16).padStart(2, '0')).join('');
}

const tomlString = (s) => JSON.stringify(String(s));

/**
 * A streamcap configuration (TOML) for the licence gate: tenant "demo" with
 * the dev tenant's key (so `mint()` grants work), a server key of its own,
 * and a ClearKey upstream with the given injected headers.
 * @param {{upstream: string, headers?: Record<string, string>, serverKey?: string, policy?: string}} o
 */
export function gateConfig({ upstream, headers = {}, serverKey = randomKeyHex(), policy = 'reject_new' }) {
  const h = Object.entries(headers).map(([k, v]) => `${tomlString(k)} = ${tomlString(v)}`).join(', ');
  return [
    'cors_origins = ["*"]',
    'licence_connect_timeout_ms = 2000',
    'licence_timeout_ms = 8000',
    '',
    '[[server_keys]]',
    'kid = "t1"',
    `secret = ${tomlString(serverKey)}`,
    '',
    '[[tenants]]',
    'id = "demo"',
    `default_policy = ${tomlString(policy)}`,
    `keys = [{ kid = "dev", secret = ${tomlString(DEV_TENANT_KEY)} }]`,
    '[tenants.licence.clearkey]',
    `upstream = ${tomlString(upstream)}`,
    `headers = { ${h} }`,
    'pass_headers = []',
    '',
  ].join('\n');
}
