// The demo page: one simulated player on the streamcap player module.
//
// Query parameters: api (the streamcap API origin; default from
// /config.json), user, limit, label, device, content, policy, poll, and
// grant (use this grant instead of asking /grant), autostart=1.

import { StreamcapPlayer } from './streamcap-player.js';

const q = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

const cfg = await fetch('config.json').then((r) => (r.ok ? r.json() : {})).catch(() => ({}));
const api = q.get('api') || cfg.api || 'http://127.0.0.1:8080';
const user = q.get('user') || 'alice';
const limit = q.get('limit') || '2';
const label = q.get('label') || 'This browser';

// The grant: given in the URL, or minted by the demo server's /grant
// (standing in for your backend). A function, so every start and kick gets a fresh one.
const grantQuery = new URLSearchParams({ user, limit, label });
for (const k of ['device', 'content', 'policy', 'poll']) if (q.get(k)) grantQuery.set(k, q.get(k));
const fixedGrant = q.get('grant');
async function getGrant() {
  if (fixedGrant) return fixedGrant;
  const r = await fetch(`grant?${grantQuery}`);
  if (!r.ok) throw new Error(`grant endpoint: ${r.status} ${await r.text()}`);
  return r.text();
}

$('user').textContent = user;
$('label').textContent = label;
$('limit').textContent = limit;
document.title = `${label} · streamcap demo`;

const player = new StreamcapPlayer({ baseUrl: api, user, grant: getGrant });
window.streamcapPlayer = player; // for poking at it from the console

// ---- rendering ---------------------------------------------------------------

const fmtTime = (unix) => (unix ? new Date(unix * 1000).toLocaleTimeString() : '–');
function ago(unix) {
  const s = Math.max(0, Math.round(Date.now() / 1000 - unix));
  return s < 60 ? `${s} s ago` : `${Math.floor(s / 60)} min ago`;
}
function who(view) {
  if (!view) return 'another device';
  const name = view.label || view.device || (view.session_id ? `session ${view.session_id}` : 'another device');
  return view.device && view.label ? `${view.label} (${view.device})` : name;
}

function log(text) {
  const li = document.createElement('li');
  li.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  $('log').prepend(li);
  while ($('log').children.length > 30) $('log').lastChild.remove();
}

function render() {
  const s = player.state;
  $('state').textContent = s;
  $('state').dataset.state = s;
  $('screen').dataset.state = s;
  $('session').textContent = player.sessionId ?? '–';
  $('expires').textContent = player.expiresAt && (s === 'playing' || s === 'retrying') ? fmtTime(player.expiresAt) : '–';
  const playing = s === 'playing' || s === 'retrying';
  $('play').disabled = playing || s === 'starting' || s === 'stopping';
  $('stop').disabled = !playing;
  $('screen-title').textContent = {
    idle: 'Press play',
    starting: 'Starting…',
    playing: `Now playing on ${label}`,
    retrying: 'Playing (connection trouble, retrying…)',
    refused: 'Too many streams',
    error: 'Could not start',
    stopping: 'Stopping…',
    stopped: 'Stopped',
  }[s];
  $('refused').hidden = s !== 'refused';
  $('stopped').hidden = s !== 'stopped';
}

function tick() {
  const el = $('countdown');
  if (player.nextBeatAt && (player.state === 'playing' || player.state === 'retrying')) {
    const ms = Math.max(0, player.nextBeatAt - Date.now());
    el.textContent = `${player.state === 'retrying' ? 'retry' : 'heartbeat'} in ${(ms / 1000).toFixed(1)} s`;
  } else {
    el.textContent = player.state === 'playing' ? 'now' : '–';
  }
}
setInterval(tick, 100);

function showRefusal(r) {
  const group = r.error === 'group_limit_reached';
  $('refused-text').textContent =
    `${group ? 'This title\u2019s group' : 'Your account'} already plays ${r.active} of ${r.limit} ` +
    `allowed streams. Stop one of these to play here:`;
  const ul = $('sessions');
  ul.replaceChildren();
  for (const s of r.sessions) {
    const li = document.createElement('li');
    li.dataset.sessionId = s.session_id;
    const info = document.createElement('div');
    info.className = 'who';
    const name = document.createElement('b');
    name.textContent = s.label || 'Unnamed player';
    const meta = document.createElement('span');
    meta.className = 'meta';
    meta.textContent = [
      s.device ? `device ${s.device}` : null,
      s.content ? `playing ${s.content}` : null,
      `started ${fmtTime(s.started_at)} (${ago(s.started_at)})`,
    ].filter(Boolean).join(' · ');
    info.append(name, meta);
    const btn = document.createElement('button');
    btn.type = 'button';
    btn.className = 'kick';
    btn.dataset.sessionId = s.session_id;
    btn.textContent = 'Stop it and play here';
    btn.addEventListener('click', () => kickAndPlay(s));
    li.append(info, btn);
    ul.append(li);
  }
}

const REASONS = {
  kicked: (by) => `${who(by)} stopped this stream${by?.started_at ? ` at ${fmtTime(by.started_at)}` : ''}.`,
  evicted: (by) => `${who(by)} started playing, and this account's oldest stream makes way.`,
  replaced: (by) => `Replaced by ${who(by)}.`,
  limit_exceeded: () => 'Too many streams were playing on this account; this one, the newest, was stopped.',
  ended: () => 'You stopped playback.',
  expired: () => 'Lost contact with the server for too long.',
  invalid_token: () => 'This session is no longer valid.',
  forbidden: () => 'This session belongs to another account.',
};

function showStopped(info) {
  const text = (REASONS[info.reason] ?? (() => `Stopped (${info.reason}).`))(info.by);
  const p = $('stop-reason');
  p.dataset.reason = info.reason;
  p.dataset.by = info.by ? who(info.by) : '';
  p.textContent = `${text} [reason: ${info.reason}${info.status ? `, HTTP ${info.status}` : ''}]`;
}

// ---- wiring -----------------------------------------------------------------

player.on('state', ({ state, previous }) => {
  render();
  log(`state ${previous} → ${state}`);
});
player.on('started', (r) => {
  log(`started ${r.sessionId}: ${r.active}/${r.limit} streams${r.evicted.length ? `, evicted ${r.evicted.join(', ')}` : ''}`);
});
player.on('refused', (r) => {
  showRefusal(r);
  log(`refused: ${r.error} (${r.active}/${r.limit})`);
});
player.on('error', (r) => log(`start failed: ${r.status} ${r.error} ${r.message}`));
player.on('heartbeat', (h) => {
  render();
  log(`heartbeat ok${h.recovered ? ' (recovered)' : ''}, next in ~${h.pollAfter} s`);
});
player.on('retry', (e) => log(`heartbeat failed (${e.error}), retry #${e.attempt}`));
player.on('stopped', (info) => {
  showStopped(info);
  render();
  log(`stopped: ${info.reason}${info.by ? ` by ${who(info.by)}` : ''}`);
});

async function play() {
  if (['starting', 'playing', 'retrying', 'stopping'].includes(player.state)) return;
  await player.start();
}

async function kickAndPlay(s) {
  for (const b of document.querySelectorAll('button.kick')) b.disabled = true;
  log(`stopping ${who(s)} (${s.session_id})`);
  const k = await player.kick(s.session_id);
  if (!k.ok) log(`kick failed: ${k.status} ${k.error ?? ''}`);
  await player.start();
}

$('play').addEventListener('click', play);
$('stop').addEventListener('click', () => player.stop());
render();
document.body.dataset.ready = '1';
if (q.get('autostart') === '1') play();
