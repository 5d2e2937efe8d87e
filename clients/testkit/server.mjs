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

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
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
 * Starts `streamcap serve` in dev mode. With `port`/`adminPort` it reuses
 * those (a restart on the same address); otherwise it picks free ones.
 * Resolves once /healthz answers (within 15 s).
 */
export async function startServer({ port, adminPort, extraArgs = [] } = {}) {
  port ??= await freePort();
  adminPort ??= await freePort();
  const bin = streamcapBin();
  const child = spawn(
    bin,
    ['serve', '--listen', `127.0.0.1:${port}`, '--admin-listen', `127.0.0.1:${adminPort}`, ...extraArgs],
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
