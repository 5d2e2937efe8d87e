// The demo page end to end in Debian's headless Chromium (puppeteer-core,
// no browser download): a real streamcap server with the licence gate, the
// demo's static server and its ClearKey licence server on 127.0.0.1, three
// tabs of one user with limit 2. The tab in front plays the encrypted video.
//
//   node --test clients/demo/test/
//
// Needs /usr/bin/chromium (apt-get install -y chromium), `npm ci` in clients/
// and the streamcap binary ($STREAMCAP_BIN or target/debug/streamcap).
// Screenshots go to clients/artifacts/.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, mkdir, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import puppeteer from 'puppeteer-core';
import { startServer, uniqueUser, mint, listSessions, eventually, freePort, gateConfig } from '../../testkit/server.mjs';
import { startDemoServer } from '../serve.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const artifacts = path.resolve(here, '..', '..', 'artifacts');
const CHROMIUM = process.env.CHROMIUM_BIN ?? '/usr/bin/chromium';

const ARGS = [
  '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--autoplay-policy=no-user-gesture-required',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  // Keep timers of tabs that are not in front running at their pace.
  '--disable-background-timer-throttling', '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
];

test('three tabs, limit 2: refused, kick from the third tab, the kicked tab says why', { timeout: 120000 }, async (t) => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} not found: apt-get install -y chromium`);
  await mkdir(artifacts, { recursive: true });
  const started = Date.now();

  // The API's port first: the demo page is told where the API is.
  const apiPort = await freePort();
  const demo = await startDemoServer({ api: `http://127.0.0.1:${apiPort}`, licencePort: 0 });
  t.after(() => demo.close());
  const dir = await mkdtemp(path.join(os.tmpdir(), 'streamcap-demo-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const config = path.join(dir, 'streamcap.toml');
  await writeFile(config, gateConfig({
    upstream: demo.licence.url,
    headers: { 'X-Licence-Auth': 'secret-for-{tenant}', 'X-Streamcap-Session': '{session_id}' },
  }));
  const api = await startServer({ config, port: apiPort });
  t.after(() => api.stop());
  assert.notEqual(new URL(demo.url).origin, new URL(api.baseUrl).origin, 'the page calls the API cross-origin');

  const profile = await mkdtemp(path.join(os.tmpdir(), 'streamcap-chromium-'));
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    userDataDir: profile,
    args: ARGS,
    defaultViewport: { width: 1100, height: 720 },
    timeout: 30000,
  });
  // One hook, in this order: Chromium writes to its profile until it exits.
  t.after(async () => {
    await browser.close().catch(() => {});
    await rm(profile, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 });
  });

  const errors = [];
  const user = uniqueUser('tabs');
  const open = async (label, device) => {
    const page = await browser.newPage();
    page.setDefaultTimeout(10000);
    page.on('pageerror', (e) => errors.push(`${label}: ${e.message}`));
    const q = new URLSearchParams({ user, limit: '2', label, device, poll: '1' });
    await page.goto(`${demo.url}/?${q}`);
    await page.waitForSelector('body[data-ready="1"]');
    return page;
  };
  const attr = (page, sel, name) => page.$eval(sel, (el, n) => el.getAttribute(n), name);
  const text = (page, sel) => page.$eval(sel, (el) => el.textContent);
  const state = (page) => attr(page, '#state', 'data-state');
  const waitState = (page, s, timeout = 10000) => page.waitForSelector(`#state[data-state="${s}"]`, { timeout });
  // The video plays: its clock runs, through the licence gate.
  const videoPlays = async (page, seconds) => {
    await page.waitForFunction((sec) => document.getElementById('video').currentTime >= sec, { timeout: 20000, polling: 200 }, seconds);
    assert.equal(await attr(page, '#video-state', 'data-state'), 'playing');
  };

  // Tabs 1 and 2 play.
  const tv = await open('Living room TV', 'tv-1');
  await tv.click('#play');
  await waitState(tv, 'playing');
  await videoPlays(tv, 1.5);
  assert.ok(demo.licence.requests.some((r) => r.status === 200), 'a licence came through the gate');
  const phone = await open('Phone', 'phone-1');
  await phone.click('#play');
  await waitState(phone, 'playing');
  const tvSession = await text(tv, '#session');
  const phoneSession = await text(phone, '#session');
  assert.match(tvSession, /^[0-9a-f]{16}$/);

  // Both keep beating (the countdown runs, the token is renewed).
  await tv.waitForFunction(() => window.streamcapPlayer.nextBeatAt !== null);
  assert.match(await text(tv, '#countdown'), /heartbeat in \d\.\d s|now/);
  const beats = await tv.evaluate(() => new Promise((resolve) => {
    let n = 0;
    const off = window.streamcapPlayer.on('heartbeat', () => {
      if (++n === 2) { off(); resolve(n); }
    });
  }));
  assert.equal(beats, 2);

  // Tab 3 is refused and offers the two others.
  const laptop = await open('Laptop', 'laptop-1');
  await laptop.click('#play');
  await waitState(laptop, 'refused');
  await laptop.waitForSelector('#refused:not([hidden]) #sessions li');
  const items = await laptop.$$eval('#sessions li', (lis) => lis.map((li) => ({
    id: li.dataset.sessionId,
    text: li.textContent,
    kick: !!li.querySelector('button.kick'),
  })));
  assert.equal(items.length, 2);
  assert.deepEqual(items.map((i) => i.id), [tvSession, phoneSession]);
  assert.match(items[0].text, /Living room TV/);
  assert.match(items[0].text, /device tv-1/);
  assert.match(items[0].text, /started \S+/);
  assert.match(items[1].text, /Phone/);
  assert.ok(items.every((i) => i.kick), 'one kick button per session');
  assert.match(await text(laptop, '#refused-text'), /2 of 2/);
  await laptop.screenshot({ path: path.join(artifacts, 'demo.png') });

  // Kick the TV from the laptop: the laptop plays.
  await laptop.click(`button.kick[data-session-id="${tvSession}"]`);
  await waitState(laptop, 'playing');
  const laptopSession = await text(laptop, '#session');
  assert.match(laptopSession, /^[0-9a-f]{16}$/);
  assert.notEqual(laptopSession, tvSession);

  // The TV learns at its next heartbeat and says why.
  await waitState(tv, 'stopped', 5000);
  assert.equal(await attr(tv, '#stop-reason', 'data-reason'), 'kicked');
  assert.equal(await attr(tv, '#stop-reason', 'data-by'), 'Laptop (laptop-1)');
  assert.match(await text(tv, '#stop-reason'), /Laptop .*stopped this stream.*reason: kicked, HTTP 410/);
  assert.equal(await tv.$eval('#stopped', (el) => el.checkVisibility()), true);
  // Its video was unloaded: no source, keys dropped.
  await tv.waitForSelector('#video-state[data-state="stopped"]', { timeout: 5000 });
  assert.equal(await tv.$eval('#video', (v) => v.readyState), 0);
  // The laptop, in front, plays the video.
  await laptop.bringToFront();
  await videoPlays(laptop, 1.5);
  await tv.screenshot({ path: path.join(artifacts, 'demo-kicked.png') });
  assert.equal(await state(phone), 'playing');
  await laptop.screenshot({ path: path.join(artifacts, 'demo-playing.png') });
  // Every licence request that reached the upstream came from a live session through the gate.
  const live0 = new Set([tvSession, phoneSession, laptopSession]);
  assert.ok(demo.licence.requests.every((r) => r.status === 200 && live0.has(r.headers['x-streamcap-session'])));

  // The server agrees: phone and laptop live, in that order.
  const grant = await mint({ user, limit: 2 });
  const live = await listSessions(api.baseUrl, user, grant);
  assert.deepEqual(live.sessions.map((s) => s.session_id), [phoneSession, laptopSession]);

  // Closing a tab ends its session at once (pagehide → keepalive DELETE, preflighted).
  // (Within 1.5 s, well before its 3 s lease could expire, and counted as `ended`.)
  const ended = () => api.metric('streamcap_sessions_stopped_total', 'reason="ended"');
  assert.equal(await ended(), 0);
  await phone.close({ runBeforeUnload: true });
  await eventually(async () => (await listSessions(api.baseUrl, user, grant)).active === 1, 1500, 'the closed tab to stop');
  assert.equal(await ended(), 1);
  assert.deepEqual((await listSessions(api.baseUrl, user, grant)).sessions.map((s) => s.session_id), [laptopSession]);

  // Every call went through CORS: preflights were answered.
  assert.ok((await api.metric('streamcap_http_requests_total', 'route="preflight"')) > 0, 'preflights seen');
  assert.deepEqual(errors, [], 'no uncaught errors in the pages');

  // Stop from the page: the session ends with reason ended.
  await laptop.click('#stop');
  await waitState(laptop, 'stopped');
  assert.equal(await attr(laptop, '#stop-reason', 'data-reason'), 'ended');

  t.diagnostic(`browser test body took ${((Date.now() - started) / 1000).toFixed(1)} s`);
});
