// The licence gate in a real browser: headless Chromium (puppeteer-core, one
// browser process per device), Shaka Player, CENC content with a new key
// every ~10 s (clients/drm/content), the test ClearKey licence server as the
// upstream, and the real streamcap binary in front of it.
//
//   node --test clients/drm/test/
//
// Needs /usr/bin/chromium (CHROMIUM_BIN overrides), `npm ci` in clients/ and
// a streamcap binary with the licence gate ($STREAMCAP_BIN or
// target/debug/streamcap). One user with a limit of 1:
//   (a) the TV is admitted and plays: currentTime advances, its keys are usable,
//       its licences renew the lease (no separate heartbeat needed);
//   (b) the phone is refused at start (409) and, asking the gate anyway, gets
//       401 and no key; asking the upstream directly, 403 (no vendor credential);
//   (c) the phone kicks the TV; the TV's player ignores the 410 and stalls at
//       its next key period (waitingforkey) while the phone plays on across one;
//   (d) the TV's licence request after the kick got 410 and never reached the upstream;
//   (e) streamcap is killed and restarted mid-play: the phone's next licence
//       request heals its session and is forwarded; it plays on.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import puppeteer from 'puppeteer-core';
import { startServer, mint, uniqueUser, freePort, gateConfig, sleep } from '../../testkit/server.mjs';
import { startClearKeyServer } from '../clearkey-server.mjs';
import { contentFile } from '../../demo/serve.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const clients = path.resolve(here, '..', '..');
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';
const ARGS = [
  '--no-sandbox', '--disable-gpu', '--autoplay-policy=no-user-gesture-required',
  '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run',
];
const PAGE_FILES = {
  '/': [path.join(here, '..', 'page', 'index.html'), 'text/html; charset=utf-8'],
  '/device.js': [path.join(here, '..', 'page', 'device.js'), 'text/javascript; charset=utf-8'],
  '/streamcap-player.js': [path.join(clients, 'js', 'streamcap-player.js'), 'text/javascript; charset=utf-8'],
  '/shaka-player.js': [path.join(clients, 'node_modules', 'shaka-player', 'dist', 'shaka-player.compiled.js'), 'text/javascript; charset=utf-8'],
};
// Key periods of the content: keys.json's boundaries (12, 22, 32, 42, 52 s).
const keys = JSON.parse(await readFile(path.join(here, '..', 'content', 'keys.json'), 'utf8'));
const BOUNDARIES = keys.periods.slice(1).map((p) => p.start_s);

/** The page, the player module, Shaka and the content, on 127.0.0.1. */
async function startPages() {
  const port = await freePort();
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    const file = PAGE_FILES[url.pathname] ?? contentFile(url.pathname);
    if (!file || !existsSync(file[0])) {
      res.writeHead(404);
      res.end();
      return;
    }
    res.writeHead(200, { 'content-type': file[1], 'cache-control': 'no-store' });
    res.end(await readFile(file[0]));
  });
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${port}`,
    close: () => new Promise((r) => {
      server.closeAllConnections();
      server.close(() => r());
    }),
  };
}

/** One device: its own Chromium process and profile, one page. */
async function openDevice(t, name, pagesUrl, setup) {
  const profile = await mkdtemp(path.join(os.tmpdir(), `streamcap-drm-${name}-`));
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    userDataDir: profile,
    args: ARGS,
    timeout: 30000,
  });
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    await browser.close().catch(() => {});
    await rm(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  };
  t.after(close);
  const page = await browser.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(`${name}: ${e.message}`));
  const open = async () => {
    await page.goto(`${pagesUrl}/`);
    await page.waitForSelector('body[data-ready="1"]');
    await page.evaluate((o) => window.device.setup(o), setup);
  };
  await open();
  return {
    name,
    page,
    pageErrors,
    close,
    reload: open,
    call: (fn, ...args) => page.evaluate(fn, ...args),
    status: () => page.evaluate(() => window.device.status()),
    /** Waits until `check(status)` holds (polled every 200 ms in Node). */
    async until(check, ms, what) {
      const end = Date.now() + ms;
      let s;
      for (;;) {
        s = await page.evaluate(() => window.device.status());
        if (check(s)) return s;
        if (Date.now() > end) throw new Error(`${name}: timed out after ${ms} ms waiting for ${what}; status ${JSON.stringify(s)}`);
        await sleep(200);
      }
    },
  };
}

const licences = (s) => s.log.filter((l) => l.kind === 'licence');

test('licence gate in Chromium: admitted, refused, kicked and stalled, refused upstream-free, healed after a restart', { timeout: 240000 }, async (t) => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} not found: apt-get install -y chromium`);
  const t0 = Date.now();
  const phase = (what) => t.diagnostic(`${((Date.now() - t0) / 1000).toFixed(1)} s: ${what}`);

  // The upstream: hands out keys only with the vendor credential the gate adds.
  const upstream = await startClearKeyServer({
    port: await freePort(),
    requireHeader: { name: 'X-Licence-Auth', value: 'secret-for-demo' },
  });
  t.after(() => upstream.close());
  const forwarded = (sessionId, since = 0) => upstream.requests.filter((r) => r.headers['x-streamcap-session'] === sessionId && r.at >= since);

  const dir = await mkdtemp(path.join(os.tmpdir(), 'streamcap-gate-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const config = path.join(dir, 'streamcap.toml');
  await writeFile(config, gateConfig({
    upstream: upstream.url,
    headers: {
      'X-Licence-Auth': 'secret-for-{tenant}',
      'X-Streamcap-Session': '{session_id}',
      'X-Streamcap-Device': '{device}',
      'X-Streamcap-User': '{user}',
    },
  }));
  let api = await startServer({ config });
  t.after(() => api.crash());
  const pages = await startPages();
  t.after(() => pages.close());
  phase('streamcap, upstream and pages up');

  const user = uniqueUser('drm');
  // poll 20 s (lease 60 s): licence requests every ~10 s renew the lease well within a poll.
  const grant = (device, label) => mint({ user, limit: 1, device, label, poll: 20 });
  const tvGrant = await grant('tv-1', 'TV');
  const phoneGrant = await grant('phone-1', 'Phone');

  // (a) ------------------------------------------------------------------
  const tv = await openDevice(t, 'tv', pages.url, { api: api.baseUrl, user, grant: tvGrant });
  phase('tv browser open');
  const tvStart = await tv.call(() => window.device.start());
  assert.equal(tvStart.status, 201, JSON.stringify(tvStart));
  const tvSession = tvStart.sessionId;
  const startToken = await tv.call(() => window.device.streamcap.token);
  assert.deepEqual(await tv.call(() => window.device.load()), { ok: true });
  let s = await tv.until((x) => x.currentTime >= 3 && x.usable >= 1, 20000, 'the tv to play 3 s');
  phase(`(a) tv plays: currentTime ${s.currentTime.toFixed(1)}, keys ${JSON.stringify(s.keys)}`);
  assert.equal(s.state, 'playing');
  assert.equal(s.keys[keys.periods[0].kid], 'usable');
  assert.ok(licences(s).length >= 1 && licences(s).every((l) => l.status === 200 && l.renewed), JSON.stringify(licences(s)));
  assert.notEqual(s.token, startToken, 'the licence answer renewed the lease');
  assert.ok(s.heartbeats.licence >= 1);
  assert.equal(s.heartbeats.heartbeat, 0, 'no separate heartbeat: the licence renewed the lease');
  const t1 = s.currentTime;
  s = await tv.until((x) => x.currentTime >= t1 + 1.5, 5000, 'currentTime to advance');
  // What reached the upstream: the gate's credential and placeholders, not the lease.
  const tvForwarded = forwarded(tvSession);
  assert.ok(tvForwarded.length >= 1);
  for (const r of tvForwarded) {
    assert.equal(r.status, 200);
    assert.equal(r.headers['x-licence-auth'], 'secret-for-demo');
    assert.equal(r.headers['x-streamcap-device'], 'tv-1');
    assert.equal(r.headers['x-streamcap-user'], user);
    assert.equal(r.headers.authorization, undefined, 'the lease token is not forwarded');
  }

  // (b) ------------------------------------------------------------------
  const phone = await openDevice(t, 'phone', pages.url, { api: api.baseUrl, user, grant: phoneGrant });
  phase('phone browser open');
  const refused = await phone.call(() => window.device.start());
  assert.equal(refused.status, 409, JSON.stringify(refused));
  assert.deepEqual(refused.sessions.map((x) => x.session_id), [tvSession]);
  const upstreamBefore = upstream.requests.length;
  const refusedBefore = await api.metric('streamcap_licence_requests_total', 'outcome="refused_');
  // A player that plays anyway: no session of its own, so it presents the
  // grant and the TV's session id (from the 409) to the gate.
  await phone.call((sid, g) => window.device.forceLicence({ sessionId: sid, token: g }), tvSession, phoneGrant);
  await phone.call(() => window.device.load());
  s = await phone.until((x) => licences(x).some((l) => l.status === 401), 15000, 'the gate to refuse the phone');
  await sleep(2000);
  s = await phone.status();
  phase(`(b) phone refused: start 409, licence ${JSON.stringify(licences(s).map((l) => l.status))}, currentTime ${s.currentTime}`);
  // (Chromium may move the clock by a frame or two before it notices the missing key.)
  assert.ok(s.currentTime < 0.5, `the phone does not play: currentTime ${s.currentTime}`);
  assert.ok(s.waitingForKey.length >= 1, 'the phone waits for a key');
  assert.equal(s.usable, 0, `no key: ${JSON.stringify(s.keys)}`);
  assert.ok(licences(s).every((l) => l.status === 401 && l.error === 'invalid_token'), JSON.stringify(licences(s)));
  assert.equal(licences(s).length, 1, 'a 401 is not retried');
  assert.ok((await api.metric('streamcap_licence_requests_total', 'outcome="refused_')) > refusedBefore);
  // Nothing of the phone's reached the upstream (the TV's own licences may have).
  assert.deepEqual(upstream.requests.slice(upstreamBefore).filter((r) => r.headers['x-streamcap-session'] !== tvSession), []);
  // Nor can it go to the upstream directly: it has no vendor credential.
  const direct = await phone.call(async (url) => {
    const kid = 'PxyaflstSMag5PgbbZLFcw';
    const r = await fetch(url, { method: 'POST', body: JSON.stringify({ kids: [kid], type: 'temporary' }) });
    return r.status;
  }, upstream.url);
  assert.equal(direct, 403);

  // (c) ------------------------------------------------------------------
  // The TV's player is patched to ignore stops from here on.
  await tv.call(() => window.device.ignoreStops());
  // The phone (a fresh page in its browser) kicks the TV and plays.
  await phone.reload();
  const kicked = await phone.call((sid) => window.device.kick(sid), tvSession);
  assert.equal(kicked.status, 204);
  const kickAt = Date.now();
  const tvAtKick = (await tv.status()).currentTime;
  const phoneStart = await phone.call(() => window.device.start());
  assert.equal(phoneStart.status, 201, JSON.stringify(phoneStart));
  const phoneSession = phoneStart.sessionId;
  assert.deepEqual(await phone.call(() => window.device.load()), { ok: true });
  phase(`(c) kicked at tv currentTime ${tvAtKick.toFixed(1)}`);

  // The TV plays on with the keys it has, then stalls at the first key period
  // whose licence it asked for after the kick.
  s = await tv.until((x) => x.waitingForKey.some((w) => w > 1), 45000, 'the tv to wait for a key');
  // waitingforkey fires when the decoder, a little ahead of the clock, meets
  // the first frame of the new period; the clock runs on to that frame.
  const waitedAt = s.waitingForKey.find((w) => w > 1);
  const boundary = BOUNDARIES.find((b) => b >= waitedAt - 0.1 && b - waitedAt < 1.5);
  assert.ok(boundary !== undefined, `waited for a key at ${waitedAt}, not just before a key boundary ${BOUNDARIES}`);
  assert.ok(boundary > tvAtKick, `stalled at ${boundary} after the kick at ${tvAtKick}`);
  // It comes to rest just before the boundary and stays there.
  const samples = [];
  let tvStalled;
  for (let i = 0; i < 40; i++) {
    tvStalled = await tv.status();
    samples.push(Number(tvStalled.currentTime.toFixed(3)));
    const n = samples.length;
    if (n >= 8 && samples[n - 1] - samples[n - 8] < 0.01) break; // still for 1.4 s
    await sleep(200);
  }
  const stalledAt = tvStalled.currentTime;
  assert.ok(samples.at(-1) - samples.at(-8) < 0.01, `the tv comes to rest: ${samples}`);
  // (Its clock may creep a frame or two past the boundary before it rests: 12 fps, 83 ms a frame.)
  assert.ok(stalledAt > boundary - 0.6 && stalledAt < boundary + 0.25, `the tv stopped at the boundary ${boundary}: ${stalledAt}`);
  const stalledKid = keys.periods.find((p) => p.start_s === boundary).kid;
  assert.notEqual(tvStalled.keys[stalledKid], 'usable');
  phase(`(c) tv stalled at ${stalledAt.toFixed(2)} (boundary ${boundary}; waitingforkey at ${waitedAt.toFixed(2)}; clock ${samples.join(' ')}), keys ${JSON.stringify(tvStalled.keys)}`);
  // The phone plays on across a key boundary.
  s = await phone.until((x) => x.currentTime >= BOUNDARIES[0] + 1, 30000, 'the phone to cross a key period');
  assert.equal(s.keys[keys.periods[1].kid], 'usable');
  assert.equal(s.state, 'playing');
  assert.deepEqual(s.waitingForKey.filter((w) => w > 1), [], 'the phone never waited for a key after its start');
  phase(`(c) phone plays on: currentTime ${s.currentTime.toFixed(1)}, keys ${JSON.stringify(s.keys)}`);

  // (d) ------------------------------------------------------------------
  const tvLog = licences(tvStalled).filter((l) => l.at >= kickAt);
  assert.ok(tvLog.some((l) => l.status === 410 && l.reason === 'kicked'), JSON.stringify(tvLog));
  assert.ok(tvLog.every((l) => l.status === 410), `after the kick the tv got only 410s: ${JSON.stringify(tvLog)}`);
  assert.deepEqual(forwarded(tvSession, kickAt), [], 'no licence request of the stopped session reached the upstream');
  assert.ok(tvStalled.log.some((l) => l.kind === 'stop ignored' && l.reason === 'kicked'));
  phase(`(d) tv licence answers after the kick: ${tvLog.map((l) => `${l.status} ${l.reason} at +${((l.at - kickAt) / 1000).toFixed(1)} s (video ${l.currentTime.toFixed(1)} s)`).join(', ')}; upstream saw none`);
  const outcomes = (await (await fetch(`${api.adminUrl}/metrics`)).text())
    .split('\n').filter((l) => l.startsWith('streamcap_licence_requests_total{')).map((l) => l.replace('streamcap_licence_requests_total', ''));
  phase(`(d) licence outcomes: ${outcomes.join(' ')}`);
  await tv.close();

  // (e) ------------------------------------------------------------------
  // Restart when the phone's next licence request is still ahead: right after one.
  const phoneLicences = licences(await phone.status()).length;
  await phone.until((x) => licences(x).length > phoneLicences, 15000, 'a phone licence request');
  const restartAt = Date.now();
  const phoneBefore = await phone.status();
  await api.crash();
  api = await startServer({ config, port: api.port, adminPort: api.adminPort });
  phase(`(e) streamcap restarted at phone currentTime ${phoneBefore.currentTime.toFixed(1)}`);
  // The licence just seen was for the boundary ~4 s ahead (bufferingGoal); the next one after that is new.
  const next = BOUNDARIES.find((b) => b > phoneBefore.currentTime + 6);
  assert.ok(next !== undefined, `no key boundary left after ${phoneBefore.currentTime}`);
  s = await phone.until((x) => x.currentTime >= next + 1, 40000, `the phone to play past ${next} s`);
  const healedLicences = licences(s).filter((l) => l.at > restartAt);
  assert.ok(healedLicences.length >= 1 && healedLicences.every((l) => l.status === 200 && l.renewed), JSON.stringify(healedLicences));
  assert.ok(forwarded(phoneSession, restartAt).some((r) => r.status === 200), 'forwarded to the upstream after the restart');
  const healed = await api.metric('streamcap_heartbeats_healed_total');
  assert.ok(healed >= 1, 'the new process healed the session');
  assert.equal(s.state, 'playing');
  assert.deepEqual(s.waitingForKey.filter((w) => w > 1), []);
  phase(`(e) phone healed (healed_total ${healed}) and played past ${next}: currentTime ${s.currentTime.toFixed(1)}, licences after restart ${healedLicences.length}, phone heartbeats ${JSON.stringify(s.heartbeats)}`);

  assert.deepEqual([...tv.pageErrors, ...phone.pageErrors], []);
  t.diagnostic(`browser test took ${((Date.now() - t0) / 1000).toFixed(1)} s`);
});
