// The player's timing rules with an injected fetch, clock and timers (no
// server): jitter, backoff, the give-up at expires_at, Retry-After, and a
// stop during a start.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { StreamcapPlayer } from '../streamcap-player.js';
import { fakeTime } from '../../testkit/fake-time.mjs';

const json = (status, body, headers = {}) =>
  new Response(body === null ? null : JSON.stringify(body), { status, headers: { 'content-type': 'application/json', ...headers } });

/** A fetch answering from a queue of handlers; records the calls. */
function fakeFetch(clock) {
  const calls = [];
  const f = async (url, init) => {
    calls.push({ url, method: init.method, auth: init.headers.Authorization, at: clock.now() });
    const h = f.handler;
    return h(url, init, calls.length);
  };
  f.calls = calls;
  return f;
}

function started(clock, poll = 10, ttlPolls = 3) {
  return json(201, {
    session_id: 'aaaaaaaaaaaaaaaa', token: 's1.t0', poll_after: poll,
    expires_at: Math.floor(clock.now() / 1000) + poll * ttlPolls, active: 1, limit: 2, evicted: [],
  });
}

test('heartbeats come at poll_after ±10 %', async () => {
  const clock = fakeTime();
  const f = fakeFetch(clock);
  let n = 0;
  f.handler = (url) => {
    if (!url.endsWith('/heartbeat')) return started(clock);
    n += 1;
    return json(200, { session_id: 'aaaaaaaaaaaaaaaa', token: `s1.t${n}`, poll_after: 10, expires_at: Math.floor(clock.now() / 1000) + 30 });
  };
  const randoms = [0, 1, 0.5];
  const p = new StreamcapPlayer({
    baseUrl: 'http://x', user: 'u', grant: 'g1.x.y', fetch: f, ...clock, random: () => randoms.shift() ?? 0.5,
  });
  const delays = [];
  p.on('schedule', (e) => delays.push(e.inMs));
  await p.start();
  await clock.advance(9000);
  await clock.advance(11000);
  await clock.advance(10000);
  assert.deepEqual(delays, [9000, 11000, 10000, 10000]);
  // Each heartbeat used the newest token.
  assert.deepEqual(f.calls.slice(1).map((c) => c.auth), ['Bearer s1.t0', 'Bearer s1.t1', 'Bearer s1.t2']);
});

test('retries with backoff until expires_at, then stops with reason expired', async () => {
  const clock = fakeTime();
  const f = fakeFetch(clock);
  f.handler = (url) => {
    if (!url.endsWith('/heartbeat')) return started(clock);
    throw new TypeError('fetch failed');
  };
  const p = new StreamcapPlayer({ baseUrl: 'http://x', user: 'u', grant: 'g', fetch: f, ...clock, random: () => 0.5 });
  const retries = [];
  p.on('retry', (e) => retries.push(e.delayMs));
  let stop = null;
  p.on('stopped', (s) => {
    stop = { ...s, at: clock.now() };
  });
  const t0 = clock.now();
  const r = await p.start();
  assert.ok(r.ok);
  const expiresMs = p.expiresAt * 1000;
  await clock.advance(40000);
  assert.ok(stop, 'stopped');
  assert.equal(stop.reason, 'expired');
  assert.equal(stop.status, 0);
  assert.equal(stop.at, expiresMs);
  // 0.5, 1, 2, 4, 5, 5, … s; one last try 250 ms before the end; then the give-up.
  assert.deepEqual(retries.slice(0, 5), [500, 1000, 2000, 4000, 5000]);
  assert.equal(retries.at(-1), null);
  const beats = f.calls.filter((c) => c.url.endsWith('/heartbeat'));
  assert.equal(beats.at(-1).at, expiresMs - 250);
  assert.ok(beats.every((c) => c.auth === 'Bearer s1.t0'), 'retries keep the token they have');
  assert.equal(clock.pending().length, 0, 'no timer left');
  assert.ok(stop.at - t0 <= 30000);
});

test('503 Retry-After is honoured, 5xx is not definitive', async () => {
  const clock = fakeTime();
  const f = fakeFetch(clock);
  let n = 0;
  f.handler = (url) => {
    if (!url.endsWith('/heartbeat')) return started(clock);
    n += 1;
    if (n === 1) return json(503, { error: 'over_capacity', message: 'busy' }, { 'retry-after': '3' });
    if (n === 2) return json(502, null);
    return json(200, { session_id: 'aaaaaaaaaaaaaaaa', token: 's1.t9', poll_after: 10, expires_at: Math.floor(clock.now() / 1000) + 30 });
  };
  const p = new StreamcapPlayer({ baseUrl: 'http://x', user: 'u', grant: 'g', fetch: f, ...clock, random: () => 0.5 });
  const retries = [];
  p.on('retry', (e) => retries.push(e));
  await p.start();
  await clock.advance(10000);
  assert.equal(retries[0].delayMs, 3000);
  assert.equal(retries[0].error, 'over_capacity');
  assert.equal(p.state, 'retrying');
  await clock.advance(3000);
  assert.equal(retries[1].error, 'http_502');
  await clock.advance(5000);
  assert.equal(p.state, 'playing');
  assert.equal(p.token, 's1.t9');
});

test('a stop during a start deletes the session the start got', async () => {
  const clock = fakeTime();
  const f = fakeFetch(clock);
  let release;
  f.handler = (url, init) => {
    if (init.method === 'POST') return new Promise((r) => { release = () => r(started(clock)); });
    return new Response(null, { status: 204 });
  };
  const p = new StreamcapPlayer({ baseUrl: 'http://x', user: 'u', grant: 'g', fetch: f, ...clock });
  const starting = p.start();
  await Promise.resolve();
  await Promise.resolve();
  await p.stop();
  assert.equal(p.state, 'stopped');
  release();
  const r = await starting;
  assert.equal(r.ok, false);
  assert.equal(r.error, 'aborted');
  await clock.advance(10);
  const del = f.calls.find((c) => c.method === 'DELETE');
  assert.ok(del, 'orphan deleted');
  assert.equal(del.auth, 'Bearer s1.t0');
  assert.equal(p.state, 'stopped');
  assert.equal(clock.pending().length, 0);
});

test('a clock running ahead does not give up early', async () => {
  const clock = fakeTime();
  const f = fakeFetch(clock);
  f.handler = (url) => {
    // The server's clock is 10 minutes behind ours.
    if (!url.endsWith('/heartbeat')) {
      return json(201, { session_id: 'aaaaaaaaaaaaaaaa', token: 's1.t0', poll_after: 10,
        expires_at: Math.floor(clock.now() / 1000) - 600 + 30, active: 1, limit: 1, evicted: [] });
    }
    throw new TypeError('fetch failed');
  };
  const p = new StreamcapPlayer({ baseUrl: 'http://x', user: 'u', grant: 'g', fetch: f, ...clock, random: () => 0.5 });
  let stoppedAt = null;
  p.on('stopped', () => {
    stoppedAt = clock.now();
  });
  const t0 = clock.now();
  await p.start();
  await clock.advance(60000);
  assert.equal(stoppedAt - t0, 30000, 'falls back to 3 × poll_after');
});
