// The licence gate on the player side, with an injected fetch, clock and
// timers and a stand-in for Shaka Player's networking engine (no browser):
// licence answers renew the lease and replace heartbeats; 410/401/403 from
// the gate stop the session and playback; 502/504 keep the renewed token;
// attachShaka routes licence requests only.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { StreamcapPlayer, attachShaka } from '../streamcap-player.js';
import { fakeTime } from '../../testkit/fake-time.mjs';

const json = (status, body) => new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } });
const SID = 'aaaaaaaaaaaaaaaa';

/** A player whose server answers start with poll 10 s and counts heartbeats. */
async function playing(clock, { poll = 10 } = {}) {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, method: init.method, auth: init.headers.Authorization, at: clock.now() });
    if (url.endsWith('/heartbeat')) {
      return json(200, { session_id: SID, token: `hb.${calls.length}`, poll_after: poll, expires_at: Math.floor(clock.now() / 1000) + 3 * poll });
    }
    if (init.method === 'DELETE') return new Response(null, { status: 204 });
    return json(201, { session_id: SID, token: 't0', poll_after: poll, expires_at: Math.floor(clock.now() / 1000) + 3 * poll, active: 1, limit: 1, evicted: [] });
  };
  const p = new StreamcapPlayer({ baseUrl: 'http://cap.test/', user: 'al ice', grant: 'g', fetch, ...clock, random: () => 0.5, unloadTarget: null });
  const r = await p.start();
  assert.ok(r.ok);
  return { p, calls, heartbeats: () => calls.filter((c) => c.url.endsWith('/heartbeat')) };
}

const renewal = (clock, token, poll = 10) => ({
  'Streamcap-Token': token,
  'Streamcap-Expires-At': String(Math.floor(clock.now() / 1000) + 3 * poll),
  'Streamcap-Poll-After': String(poll),
});

test('licenceUrl names the session and the system', async () => {
  const clock = fakeTime();
  const { p } = await playing(clock);
  assert.equal(p.licenceUrl('clearkey'), `http://cap.test/v1/users/al%20ice/sessions/${SID}/licence/clearkey`);
  const idle = new StreamcapPlayer({ baseUrl: 'http://cap.test', user: 'u', grant: 'g', unloadTarget: null });
  assert.equal(idle.licenceUrl('widevine'), null);
});

test('licence answers at least once a poll replace heartbeats', async () => {
  const clock = fakeTime();
  const { p, heartbeats } = await playing(clock);
  const renewed = [];
  p.on('heartbeat', (h) => renewed.push(h.via));
  // A licence every 8 s (key rotation) for a minute: no heartbeat goes out.
  for (let i = 1; i <= 8; i++) {
    await clock.advance(8000);
    assert.equal(p.licenceAnswer({ status: 200, headers: renewal(clock, `lic.${i}`) }), 'renewed');
    assert.equal(p.token, `lic.${i}`);
  }
  assert.equal(heartbeats().length, 0);
  assert.deepEqual(renewed, Array(8).fill('licence'));
  // The next heartbeat is due a poll after the last licence, with the licence's token.
  assert.deepEqual(clock.pending(), [10000]);
  await clock.advance(10000);
  assert.equal(heartbeats().length, 1);
  assert.equal(heartbeats()[0].auth, 'Bearer lic.8');
  // Licences rarer than the poll: heartbeats fill the gaps.
  await clock.advance(25000);
  assert.equal(heartbeats().length, 3);
  assert.equal(p.state, 'playing');
});

test('a 410 from the gate stops the session with reason and by; later answers are ignored', async () => {
  const clock = fakeTime();
  const { p, heartbeats } = await playing(clock);
  let stop = null;
  p.on('stopped', (s) => {
    stop = s;
  });
  const by = { session_id: null, started_at: 1700000005, expires_at: null, device: 'tv-1', label: 'TV', content: null, group: null };
  const body = JSON.stringify({ error: 'session_stopped', message: 'stopped', reason: 'kicked', by });
  assert.equal(p.licenceAnswer({ status: 410, headers: new Headers({ 'content-type': 'application/json' }), body }), 'stopped');
  assert.equal(p.state, 'stopped');
  assert.deepEqual({ reason: stop.reason, status: stop.status, local: stop.local, by: stop.by }, { reason: 'kicked', status: 410, local: false, by });
  assert.equal(p.token, null);
  assert.equal(p.licenceAnswer({ status: 200, headers: renewal(clock, 'late') }), 'ignored');
  assert.equal(p.token, null);
  await clock.advance(60000);
  assert.equal(heartbeats().length, 0, 'no heartbeats after the stop');
  assert.equal(clock.pending().length, 0);
});

test('401 and 403 from the gate stop the session; a 502/504 with the headers renews it; other answers change nothing', async () => {
  for (const [status, reason] of [[401, 'invalid_token'], [403, 'forbidden']]) {
    const clock = fakeTime();
    const { p } = await playing(clock);
    assert.equal(p.licenceAnswer({ status, body: { error: reason } }), 'stopped');
    assert.equal(p.stopInfo.reason, reason);
  }
  const clock = fakeTime();
  const { p } = await playing(clock);
  await clock.advance(4000);
  // The upstream failed but the gate renewed the lease: keep the new token, keep playing.
  assert.equal(p.licenceAnswer({ status: 502, headers: (n) => renewal(clock, 'after-502')[n.replace(/(^|-)([a-z])/g, (m) => m.toUpperCase())] }), 'renewed');
  assert.equal(p.token, 'after-502');
  assert.equal(p.licenceAnswer({ status: 504, headers: { 'streamcap-token': 'after-504', 'streamcap-expires-at': String(p.expiresAt + 4), 'streamcap-poll-after': '10' } }), 'renewed');
  assert.equal(p.token, 'after-504');
  assert.equal(p.licenceAnswer({ status: 404, body: { error: 'not_found' } }), 'ignored');
  assert.equal(p.licenceAnswer({ status: 503, headers: {} }), 'ignored');
  assert.equal(p.licenceAnswer({ status: 200, headers: { 'streamcap-token': 'x', 'streamcap-expires-at': 'soon' } }), 'ignored');
  assert.equal(p.token, 'after-504');
  assert.equal(p.state, 'playing');
});

/** Enough of shaka.Player and its NetworkingEngine to run a licence request through the filters. */
function fakeShaka({ server }) {
  const net = new EventTarget();
  const req = [];
  const res = [];
  net.registerRequestFilter = (f) => req.push(f);
  net.unregisterRequestFilter = (f) => req.splice(req.indexOf(f), 1);
  net.registerResponseFilter = (f) => res.push(f);
  net.unregisterResponseFilter = (f) => res.splice(res.indexOf(f), 1);
  const media = new EventTarget();
  const player = {
    config: null,
    unloaded: 0,
    getNetworkingEngine: () => net,
    getMediaElement: () => media,
    configure(c) {
      this.config = c;
    },
    unload() {
      this.unloaded += 1;
      return Promise.resolve();
    },
    filters: () => ({ req: req.length, res: res.length }),
    /** Sends one request as Shaka does: filters, the "network", retries announced by a cancelable `retry` event. */
    async send(type, request, attempts = 2) {
      for (const f of req) await f(type, request);
      for (let a = 1; ; a++) {
        const answer = await server(request);
        if (answer.status >= 200 && answer.status < 300) {
          const response = { uri: request.uris[0], originalUri: request.uris[0], status: answer.status, headers: answer.headers, data: new ArrayBuffer(0) };
          for (const f of res) await f(type, response);
          return { ok: true, attempts: a };
        }
        const event = new Event('retry', { cancelable: true });
        event.error = { code: 1001, data: [request.uris[0], answer.status, answer.body ?? '', answer.headers, type] };
        net.dispatchEvent(event);
        if (event.defaultPrevented || a >= attempts) return { ok: false, attempts: a, status: answer.status };
      }
    },
  };
  return { player, media };
}

const LICENSE = 2;
const SEGMENT = 1;

test('attachShaka: licence requests carry the lease to the gate, answers renew it, a 410 stops playback without a retry', async () => {
  const clock = fakeTime();
  const { p, heartbeats } = await playing(clock);
  const seen = [];
  let next = null;
  const { player } = fakeShaka({
    server: async (request) => {
      seen.push({ uri: request.uris[0], auth: request.headers.Authorization });
      return next(request);
    },
  });
  const stops = [];
  const detach = attachShaka(p, player, { onStopped: (info) => { stops.push(info.reason); return player.unload(); }, shaka: { net: { NetworkingEngine: { RequestType: { LICENSE } } } } });
  assert.equal(player.config.drm.servers['org.w3.clearkey'], p.licenceUrl('clearkey'));
  assert.equal(player.config.drm.servers['com.widevine.alpha'], p.licenceUrl('widevine'));

  // A licence through the gate: the lease goes with it; the answer's token is taken.
  next = () => ({ status: 200, headers: { 'streamcap-token': 'lic.1', 'streamcap-expires-at': String(Math.floor(clock.now() / 1000) + 30), 'streamcap-poll-after': '10', 'content-type': 'application/json' } });
  const ok = await player.send(LICENSE, { uris: ['http://vendor.example/licence'], headers: {}, drmInfo: { keySystem: 'org.w3.clearkey' } });
  assert.ok(ok.ok);
  assert.deepEqual(seen.at(-1), { uri: p.licenceUrl('clearkey'), auth: 'Bearer t0' });
  assert.equal(p.token, 'lic.1');

  // The key system picks the gate's system name.
  await player.send(LICENSE, { uris: ['x'], headers: {}, drmInfo: { keySystem: 'com.widevine.alpha' } });
  assert.equal(seen.at(-1).uri, p.licenceUrl('widevine'));
  assert.equal(seen.at(-1).auth, 'Bearer lic.1');

  // Segments are not touched.
  next = () => ({ status: 200, headers: {} });
  const seg = { uris: ['http://cdn.example/1.m4s'], headers: {} };
  await player.send(SEGMENT, seg);
  assert.deepEqual(seen.at(-1), { uri: 'http://cdn.example/1.m4s', auth: undefined });

  // A 502 from the gate with a renewed lease: the token is kept and Shaka retries.
  let n = 0;
  next = () => (++n === 1
    ? { status: 502, headers: { 'streamcap-token': 'after-502', 'streamcap-expires-at': String(Math.floor(clock.now() / 1000) + 30), 'streamcap-poll-after': '10' }, body: '{"error":"upstream_unavailable"}' }
    : { status: 200, headers: { 'streamcap-token': 'lic.2', 'streamcap-expires-at': String(Math.floor(clock.now() / 1000) + 30), 'streamcap-poll-after': '10' } });
  const retried = await player.send(LICENSE, { uris: ['x'], headers: {}, drmInfo: { keySystem: 'org.w3.clearkey' } });
  assert.deepEqual(retried, { ok: true, attempts: 2 });
  assert.equal(p.token, 'lic.2');
  assert.equal(heartbeats().length, 0);

  // A 410: no retry, the session stops, playback is stopped.
  next = () => ({ status: 410, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ error: 'session_stopped', reason: 'kicked', by: { label: 'Phone' } }) });
  const refused = await player.send(LICENSE, { uris: ['x'], headers: {}, drmInfo: { keySystem: 'org.w3.clearkey' } }, 3);
  assert.deepEqual(refused, { ok: false, attempts: 1, status: 410 });
  assert.equal(p.state, 'stopped');
  assert.equal(p.stopInfo.reason, 'kicked');
  assert.deepEqual(stops, ['kicked']);
  assert.equal(player.unloaded, 1);

  // Without a session no licence request goes out at all.
  const before = seen.length;
  await assert.rejects(player.send(LICENSE, { uris: ['x'], headers: {}, drmInfo: { keySystem: 'org.w3.clearkey' } }), /no session/);
  assert.equal(seen.length, before);

  detach();
  assert.deepEqual(player.filters(), { req: 0, res: 0 });
});

test('attachShaka: the app\'s own stop does not unload; a heartbeat 410 does; ended stops the session', async () => {
  const clock = fakeTime();
  {
    const { p } = await playing(clock);
    const { player, media } = fakeShaka({ server: async () => ({ status: 200, headers: {} }) });
    attachShaka(p, player);
    media.dispatchEvent(new Event('ended'));
    await clock.advance(10);
    assert.equal(p.state, 'stopped');
    assert.equal(p.stopInfo.reason, 'ended');
    assert.equal(player.unloaded, 0);
  }
  {
    // The server says 410 to a heartbeat: playback stops too.
    const calls = [];
    const fetch = async (url, init) => {
      calls.push(url);
      if (url.endsWith('/heartbeat')) return json(410, { error: 'session_stopped', reason: 'evicted', by: null });
      return json(201, { session_id: SID, token: 't0', poll_after: 10, expires_at: Math.floor(clock.now() / 1000) + 30, active: 1, limit: 1, evicted: [] });
    };
    const p = new StreamcapPlayer({ baseUrl: 'http://cap.test', user: 'u', grant: 'g', fetch, ...clock, random: () => 0.5, unloadTarget: null });
    const { player } = fakeShaka({ server: async () => ({ status: 200, headers: {} }) });
    attachShaka(p, player);
    await p.start();
    await clock.advance(10000);
    assert.equal(p.stopInfo.reason, 'evicted');
    assert.equal(player.unloaded, 1);
  }
});

test('a licence answer while heartbeats fail brings the player back to playing', async () => {
  const clock = fakeTime();
  let down = true;
  const calls = [];
  const fetch = async (url, init) => {
    calls.push(url);
    if (url.endsWith('/heartbeat')) {
      if (down) throw new TypeError('fetch failed');
      return json(200, { session_id: SID, token: 'hb', poll_after: 10, expires_at: Math.floor(clock.now() / 1000) + 30 });
    }
    return json(201, { session_id: SID, token: 't0', poll_after: 10, expires_at: Math.floor(clock.now() / 1000) + 30, active: 1, limit: 1, evicted: [] });
  };
  const p = new StreamcapPlayer({ baseUrl: 'http://cap.test', user: 'u', grant: 'g', fetch, ...clock, random: () => 0.5, unloadTarget: null });
  const recovered = [];
  p.on('heartbeat', (h) => recovered.push([h.via, h.recovered]));
  await p.start();
  await clock.advance(11000);
  assert.equal(p.state, 'retrying');
  // The licence path still works (another route, another moment): it renews the lease.
  assert.equal(p.licenceAnswer({ status: 200, headers: renewal(clock, 'lic') }), 'renewed');
  assert.equal(p.state, 'playing');
  assert.deepEqual(recovered, [['licence', true]]);
  // The retry loop is over: the next request is a heartbeat a poll later.
  down = false;
  const before = calls.length;
  await clock.advance(8999);
  assert.equal(calls.length, before);
  await clock.advance(2001);
  assert.equal(calls.length, before + 1);
  assert.equal(p.token, 'hb');
});
