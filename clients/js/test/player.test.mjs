// The player module against a real streamcap server (dev mode, 127.0.0.1,
// free ports), with grants from `streamcap mint --poll 1` (ttl 3 s).
//
//   node --test clients/js/test/

import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';

import { StreamcapPlayer } from '../streamcap-player.js';
import { startServer, mint, uniqueUser, listSessions, sleep } from '../../testkit/server.mjs';

/** Resolves with the next `type` event of `player` satisfying `pred`, or rejects after `ms`. */
function next(player, type, ms = 6000, pred = () => true) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => {
      off();
      reject(new Error(`no '${type}' event within ${ms} ms (state ${player.state})`));
    }, ms);
    const off = player.on(type, (d) => {
      if (!pred(d)) return;
      clearTimeout(t);
      off();
      resolve(d);
    });
  });
}

/** A fetch that records every request (method, url, Authorization, keepalive) and can be rewired. */
function recordingFetch() {
  const calls = [];
  const f = async (url, init = {}) => {
    calls.push({ url: String(url), method: init.method, auth: init.headers?.Authorization, keepalive: !!init.keepalive });
    return (f.through ?? fetch)(url, init);
  };
  f.calls = calls;
  f.beats = () => calls.filter((c) => c.url.endsWith('/heartbeat'));
  return f;
}

const players = [];
function player(server, user, grant, extra = {}) {
  const p = new StreamcapPlayer({ baseUrl: server.baseUrl, user, grant, ...extra });
  players.push(p);
  return p;
}

after(() => {
  for (const p of players) p.dispose();
});

describe('against one server', () => {
  let server;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server?.stop();
  });

  test('start, heartbeats with the newest token, stop', async () => {
    const user = uniqueUser('hb');
    const grant = await mint({ user, limit: 2, poll: 1, label: 'TV' });
    const f = recordingFetch();
    const p = player(server, user, grant, { fetch: f });
    const states = [];
    p.on('state', (e) => states.push(e.state));
    const tokens = [];

    const r = await p.start();
    assert.equal(r.ok, true);
    assert.equal(r.status, 201);
    assert.match(r.sessionId, /^[0-9a-f]{16}$/);
    assert.equal(r.active, 1);
    assert.equal(r.limit, 2);
    assert.deepEqual(r.evicted, []);
    assert.equal(r.pollAfter, 1);
    assert.equal(p.state, 'playing');
    tokens.push(p.token);

    for (let i = 0; i < 3; i++) {
      const hb = await next(p, 'heartbeat', 3000);
      assert.equal(hb.sessionId, r.sessionId);
      assert.equal(hb.pollAfter, 1);
      tokens.push(p.token);
    }
    // Each heartbeat presented the token of the answer before it.
    const auths = f.beats().map((c) => c.auth);
    assert.ok(auths.length >= 3);
    for (let i = 0; i < 3; i++) assert.equal(auths[i], `Bearer ${tokens[i]}`);
    assert.equal(new Set(tokens).size, tokens.length, 'every answer carries a new token');

    const listed = await listSessions(server.baseUrl, user, grant);
    assert.equal(listed.active, 1);
    assert.equal(listed.sessions[0].label, 'TV');

    const stopped = next(p, 'stopped');
    assert.equal(await p.stop(), true);
    const info = await stopped;
    assert.equal(info.reason, 'ended');
    assert.equal(info.local, true);
    assert.equal(info.status, 204);
    assert.equal(p.state, 'stopped');
    assert.deepEqual(states, ['starting', 'playing', 'stopping', 'stopped']);
    assert.equal((await listSessions(server.baseUrl, user, grant)).active, 0);

    // No heartbeat after the stop.
    const n = f.beats().length;
    await sleep(1500);
    assert.equal(f.beats().length, n);
  });

  test('signOutEverywhere stops every session of the user, its own included', async () => {
    const user = uniqueUser('signout');
    const [ga, gb] = await Promise.all([
      mint({ user, limit: 3, poll: 1, label: 'Living room TV', device: 'tv-1' }),
      mint({ user, limit: 3, poll: 1, label: 'Account settings', device: 'web-1' }),
    ]);
    const a = player(server, user, ga);
    const b = player(server, user, gb);
    assert.ok((await a.start()).ok);
    assert.ok((await b.start()).ok);
    const stopped = [next(a, 'stopped', 4000), next(b, 'stopped', 4000)];
    assert.deepEqual(await b.signOutEverywhere(), { ok: true, status: 200, stopped: 2 });
    for (const info of await Promise.all(stopped)) {
      assert.equal(info.status, 410);
      assert.equal(info.reason, 'kicked');
      assert.equal(info.by.label, 'Account settings', 'by names the grant that signed out');
      assert.equal(info.by.session_id, null);
    }
    assert.equal(a.state, 'stopped');
    assert.equal((await listSessions(server.baseUrl, user, ga)).active, 0);
    assert.deepEqual(await b.signOutEverywhere(), { ok: true, status: 200, stopped: 0 }, 'idempotent');

    const stranger = player(server, user, await mint({ user: uniqueUser('other'), limit: 1, poll: 1 }));
    const r = await stranger.signOutEverywhere();
    assert.equal(r.ok, false);
    assert.equal(r.status, 403);
    assert.equal(r.error, 'forbidden');
  });

  test('409 exposes sessions, limit and active; kick then start plays', async () => {
    const user = uniqueUser('full');
    const [ga, gb, gc] = await Promise.all([
      mint({ user, limit: 2, poll: 1, label: 'Living room TV', device: 'tv-1' }),
      mint({ user, limit: 2, poll: 1, label: 'Phone', device: 'phone-1' }),
      mint({ user, limit: 2, poll: 1, label: 'Laptop', device: 'laptop-1' }),
    ]);
    const a = player(server, user, ga);
    const b = player(server, user, gb);
    const c = player(server, user, gc);
    const ra = await a.start();
    const rb = await b.start();
    assert.ok(ra.ok && rb.ok);

    const refused = next(c, 'refused');
    const rc = await c.start();
    assert.equal(rc.ok, false);
    assert.equal(rc.status, 409);
    assert.equal(rc.error, 'limit_reached');
    assert.equal(rc.limit, 2);
    assert.equal(rc.active, 2);
    assert.deepEqual(rc.sessions.map((s) => s.session_id), [ra.sessionId, rb.sessionId], 'oldest first');
    assert.deepEqual(rc.sessions.map((s) => s.label), ['Living room TV', 'Phone']);
    assert.deepEqual(rc.sessions.map((s) => s.device), ['tv-1', 'phone-1']);
    for (const s of rc.sessions) assert.equal(typeof s.started_at, 'number');
    assert.equal((await refused).status, 409);
    assert.equal(c.state, 'refused');
    assert.equal(c.refusal.sessions.length, 2);
    assert.equal(c.sessionId, null);

    // Kick the TV from the laptop, then play on the laptop.
    const aStopped = next(a, 'stopped', 4000);
    const k = await c.kick(ra.sessionId);
    assert.deepEqual(k, { ok: true, status: 204 });
    const rc2 = await c.start();
    assert.equal(rc2.ok, true, JSON.stringify(rc2));
    assert.equal(rc2.active, 2);

    const info = await aStopped;
    assert.equal(info.status, 410);
    assert.equal(info.reason, 'kicked');
    assert.equal(info.local, false);
    assert.equal(info.by.label, 'Laptop', 'by names the kicker');
    assert.equal(info.by.device, 'laptop-1');
    assert.equal(info.by.session_id, null);
    assert.equal(a.state, 'stopped');
    assert.equal(b.state, 'playing');

    await b.stop();
    await c.stop();
  });

  test('replace stops the replaced player with reason replaced', async () => {
    const user = uniqueUser('repl');
    const [ga, gb] = await Promise.all([
      mint({ user, limit: 1, poll: 1, label: 'Episode 1', content: 'ep1' }),
      mint({ user, limit: 1, poll: 1, label: 'Episode 2', content: 'ep2' }),
    ]);
    const a = player(server, user, ga);
    const b = player(server, user, gb);
    const ra = await a.start();
    assert.ok(ra.ok);
    const aStopped = next(a, 'stopped', 4000);
    const rb = await b.start({ replace: ra.sessionId });
    assert.equal(rb.ok, true, JSON.stringify(rb));
    assert.equal(rb.active, 1);
    const info = await aStopped;
    assert.equal(info.status, 410);
    assert.equal(info.reason, 'replaced');
    assert.equal(info.by.session_id, rb.sessionId);
    assert.equal(info.by.label, 'Episode 2');
    await b.stop();
  });

  test('410 evicted under evict_oldest', async () => {
    const user = uniqueUser('evict');
    const [ga, gb] = await Promise.all([
      mint({ user, limit: 1, poll: 1, policy: 'evict_oldest', label: 'Old' }),
      mint({ user, limit: 1, poll: 1, policy: 'evict_oldest', label: 'New' }),
    ]);
    const a = player(server, user, ga);
    const b = player(server, user, gb);
    const ra = await a.start();
    const aStopped = next(a, 'stopped', 4000);
    const rb = await b.start();
    assert.equal(rb.ok, true);
    assert.deepEqual(rb.evicted, [ra.sessionId]);
    const info = await aStopped;
    assert.equal(info.status, 410);
    assert.equal(info.reason, 'evicted');
    assert.equal(info.by.session_id, rb.sessionId);
    assert.equal(info.by.label, 'New');
    await b.stop();
  });

  test('401 on a tampered token stops for good', async () => {
    const user = uniqueUser('tamper');
    const grant = await mint({ user, limit: 1, poll: 1 });
    const f = recordingFetch();
    // Flip the last character of the lease token's MAC on every heartbeat.
    f.through = (url, init) => {
      if (String(url).endsWith('/heartbeat')) {
        const tok = init.headers.Authorization.slice('Bearer '.length);
        const last = tok.at(-1) === 'A' ? 'B' : 'A';
        init = { ...init, headers: { ...init.headers, Authorization: `Bearer ${tok.slice(0, -1)}${last}` } };
      }
      return fetch(url, init);
    };
    const p = player(server, user, grant, { fetch: f });
    assert.ok((await p.start()).ok);
    const info = await next(p, 'stopped', 4000);
    assert.equal(info.status, 401);
    assert.equal(info.reason, 'invalid_token');
    assert.equal(info.error, 'invalid_token');
    assert.equal(info.by, null);
    assert.equal(p.state, 'stopped');
    const n = f.beats().length;
    assert.equal(n, 1, 'one heartbeat, then nothing');
    await sleep(2500);
    assert.equal(f.beats().length, n, 'no heartbeat after a 401');
  });

  test('a start with a bad grant is an error, not a session', async () => {
    const user = uniqueUser('bad');
    const grant = await mint({ user, limit: 1, poll: 1 });
    const p = player(server, user, grant.slice(0, -2) + (grant.endsWith('AA') ? 'BB' : 'AA'));
    const r = await p.start();
    assert.equal(r.ok, false);
    assert.equal(r.status, 401);
    assert.equal(r.error, 'invalid_grant');
    assert.equal(p.state, 'error');
    const q = player(server, 'someone-else', grant);
    const r2 = await q.start();
    assert.equal(r2.status, 403);
    assert.equal(r2.error, 'forbidden');
  });

  test('pagehide stops the session with a keepalive request', async () => {
    const user = uniqueUser('hide');
    const grant = await mint({ user, limit: 1, poll: 1 });
    const page = new EventTarget();
    const f = recordingFetch();
    const p = player(server, user, grant, { fetch: f, unloadTarget: page });
    const r = await p.start();
    assert.ok(r.ok);
    const stopped = next(p, 'stopped');
    page.dispatchEvent(new Event('pagehide'));
    const info = await stopped;
    assert.equal(info.reason, 'ended');
    assert.equal(info.status, 204);
    const del = f.calls.find((c) => c.method === 'DELETE');
    assert.ok(del && del.keepalive, 'the stop used keepalive');
    assert.equal((await listSessions(server.baseUrl, user, grant)).active, 0);
  });
});

test('keeps playing through a server restart and heals', async () => {
  let server = await startServer();
  const { port, adminPort } = server;
  try {
    const user = uniqueUser('restart');
    const grant = await mint({ user, limit: 1, poll: 1 });
    const p = player(server, user, grant);
    const retries = [];
    p.on('retry', (e) => retries.push(e));
    const r = await p.start();
    assert.ok(r.ok);
    await next(p, 'heartbeat', 3000);

    await server.crash(); // all state gone
    await next(p, 'retry', 3000);
    assert.equal(p.state, 'retrying');
    await sleep(300);
    server = await startServer({ port, adminPort });

    const hb = await next(p, 'heartbeat', 4000);
    assert.equal(hb.recovered, true);
    assert.equal(p.state, 'playing');
    assert.equal(p.sessionId, r.sessionId);
    assert.ok(retries.length >= 1);
    assert.ok(retries.every((e) => e.status === 0 && e.error === 'network'), JSON.stringify(retries));
    // The new process rebuilt the session from the token (docs/spec.md §6).
    assert.ok((await server.metric('streamcap_heartbeats_healed_total')) >= 1);
    const listed = await listSessions(server.baseUrl, user, grant);
    assert.deepEqual(listed.sessions.map((s) => s.session_id), [r.sessionId]);
    // ...and it goes on beating.
    await next(p, 'heartbeat', 3000);
    assert.equal(await p.stop(), true);
  } finally {
    await server.stop();
  }
});

test('gives up at expires_at when the server stays down', async () => {
  const server = await startServer();
  try {
    const user = uniqueUser('down');
    const grant = await mint({ user, limit: 1, poll: 1 });
    const p = player(server, user, grant);
    assert.ok((await p.start()).ok);
    await next(p, 'heartbeat', 3000);
    const expiresAtMs = p.expiresAt * 1000;
    await server.crash();
    const killedAt = Date.now();

    const info = await next(p, 'stopped', 6000);
    const stoppedAt = Date.now();
    assert.equal(info.reason, 'expired');
    assert.equal(info.local, true);
    assert.equal(info.status, 0);
    assert.equal(p.state, 'stopped');
    // expires_at is whole seconds, rounded down: allow that second.
    assert.ok(stoppedAt >= expiresAtMs - 1000, `stopped ${expiresAtMs - stoppedAt} ms before expires_at`);
    assert.ok(stoppedAt <= expiresAtMs + 1000, `stopped ${stoppedAt - expiresAtMs} ms after expires_at`);
    assert.ok(stoppedAt - killedAt >= 1000, 'kept retrying for a while');
  } finally {
    await server.stop();
  }
});
