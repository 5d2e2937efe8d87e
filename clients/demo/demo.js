// The demo page: one player on the streamcap player module, playing the
// encrypted test content (clients/drm/content) with Shaka Player, its
// licences through the streamcap licence gate.
//
// Query parameters: api (the streamcap API origin; default from
// /config.json), user, limit, label, device, content, policy, poll, and
// grant (use this grant instead of asking /grant), autostart=1, video=0 (no
// video: the session only).

import { StreamcapPlayer, attachShaka } from './streamcap-player.js';

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

// ---- the video ---------------------------------------------------------------
// Licence requests go through the gate with the lease (attachShaka); their
// answers renew it, so they count as heartbeats. A stop (410 kicked, evicted…)
// unloads the video, which drops its keys.

const video = $('video');
const withVideo = q.get('video') !== '0' && typeof shaka !== 'undefined' && shaka.Player.isBrowserSupported();
let shakaPlayer = null;
let licenceCount = 0;
const videoState = (state, text) => {
  $('video-state').dataset.state = state;
  $('video-state').textContent = text;
  $('screen').querySelector('.picture').dataset.video = state === 'playing' || state === 'loading' || state === 'waiting' ? 'on' : 'off';
};
if (withVideo) {
  shaka.polyfill.installAll();
  shakaPlayer = new shaka.Player();
  await shakaPlayer.attach(video);
  window.shakaPlayer = shakaPlayer;
  attachShaka(player, shakaPlayer, {
    keySystems: ['org.w3.clearkey'],
    onStopped: async () => {
      await shakaPlayer.unload();
      videoState('stopped', 'stopped: keys dropped');
    },
  });
  shakaPlayer.getNetworkingEngine().registerResponseFilter((type, response) => {
    if (type !== shaka.net.NetworkingEngine.RequestType.LICENSE) return;
    licenceCount += 1;
    $('licences').textContent = `${licenceCount} through the gate, last ${new Date().toLocaleTimeString()}`;
    log(`licence ${response.status ?? 200} through the gate${response.headers['streamcap-token'] ? ': lease renewed' : ''}`);
  });
  shakaPlayer.addEventListener('error', (e) => {
    const err = e.detail;
    const inner = err.data?.[0];
    const status = inner?.data?.[1];
    const why = status === 404
      ? 'the gate has no ClearKey upstream (run streamcap with clients/demo/streamcap-demo.toml)'
      : status ? `HTTP ${status}` : `code ${inner?.code ?? ''}`;
    log(`video error ${err.code}${why ? `: ${why}` : ''}`);
    if (err.severity === shaka.util.Error.Severity.CRITICAL) videoState('error', `error ${err.code}: ${why}`);
  });
  video.addEventListener('playing', () => videoState('playing', 'playing'));
  video.addEventListener('waitingforkey', () => {
    videoState('waiting', `waiting for a key at ${video.currentTime.toFixed(1)} s`);
    log(`video waits for a key at ${video.currentTime.toFixed(1)} s`);
  });
  video.addEventListener('ended', () => videoState('ended', 'ended'));
} else {
  videoState('off', q.get('video') === '0' ? 'off (video=0)' : 'not supported here');
}

async function loadVideo() {
  if (!shakaPlayer) return;
  videoState('loading', 'loading…');
  try {
    await shakaPlayer.load('content/manifest.mpd');
    video.play().catch(() => {});
  } catch (e) {
    videoState('error', `load failed: ${e.code ?? e.message}`);
  }
}

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
  if (h.via === 'heartbeat') log(`heartbeat ok${h.recovered ? ' (recovered)' : ''}, next in ~${h.pollAfter} s`);
});
player.on('retry', (e) => log(`heartbeat failed (${e.error}), retry #${e.attempt}`));
player.on('stopped', (info) => {
  showStopped(info);
  render();
  log(`stopped: ${info.reason}${info.by ? ` by ${who(info.by)}` : ''}`);
});

async function play() {
  if (['starting', 'playing', 'retrying', 'stopping'].includes(player.state)) return;
  const r = await player.start();
  if (r.ok) await loadVideo();
}

async function kickAndPlay(s) {
  for (const b of document.querySelectorAll('button.kick')) b.disabled = true;
  log(`stopping ${who(s)} (${s.session_id})`);
  const k = await player.kick(s.session_id);
  if (!k.ok) log(`kick failed: ${k.status} ${k.error ?? ''}`);
  const r = await player.start();
  if (r.ok) await loadVideo();
}

async function stop() {
  await player.stop();
  if (shakaPlayer) {
    await shakaPlayer.unload();
    videoState('stopped', 'stopped');
  }
}

$('play').addEventListener('click', play);
$('stop').addEventListener('click', stop);
render();
document.body.dataset.ready = '1';
if (q.get('autostart') === '1') play();
