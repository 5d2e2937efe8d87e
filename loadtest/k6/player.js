// streamcap player load test for k6 (v1.1.0 or later; loadtest/k6/smoke.sh checks it).
//
// Each VU is a video player: it takes a grant, starts a session
// (POST /v1/users/{user}/sessions), heartbeats every `poll_after` seconds
// with the latest lease token (POST .../sessions/{id}/heartbeat) BEATS times,
// then stops (DELETE .../sessions/{id}), as in the HTTP API contract (docs/spec.md §4).
//
// Expected outcomes that are not failures:
//   409 on start  (limit_reached / group_limit_reached) -> counter starts_rejected
//   410 on a beat (session_stopped: evicted, limit_exceeded, ...) -> counter
//       heartbeats_stopped; the player stops for good, as the spec requires.
// Anything else (5xx, 401, 403, network errors, malformed bodies) counts in
// player_errors and fails checks / http_req_failed.
//
// Grants: a file of JSON lines {"user","device","grant"} as printed by
// `streamcap mint --count N ...` (a JSON array of the same objects works too).
// VU v, iteration i plays grant number (i * VUS + v - 1) mod the number of
// grants: with as many grants as VUs each VU keeps its own grant; with more
// grants than VUs the iterations walk through all of them.
//
//   k6 run -e BASE_URL=http://127.0.0.1:8080 -e GRANTS=/abs/grants.jsonl \
//          -e VUS=50 -e ITERATIONS=3 -e BEATS=5 loadtest/k6/player.js
//
// All options (-e KEY=VALUE), defaults in brackets:
//   BASE_URL        public API base URL [http://127.0.0.1:8080]
//   GRANTS          grants file; a relative path is relative to this script [grants.jsonl]
//   VUS             number of VUs (players) [10]
//   ITERATIONS      sessions each VU plays, one after another [1]
//   DURATION        if set (e.g. 5m), run constant-vus for this long instead
//                   of a fixed number of iterations
//   BEATS           heartbeats per session before stopping [3]
//   MAX_POLL        cap (seconds) on the wait between heartbeats; 0 honours
//                   the server's poll_after exactly [0]
//   THINK           pause (seconds) after a 409 or an error before the
//                   iteration ends [1]
//   MAX_DURATION    per-vu-iterations maxDuration [10m]
//   P99_MS          threshold: http_req_duration p(99) below this [500]
//   P95_BEAT_MS     threshold: heartbeat p(95) below this [250]
//   MAX_FAILED_RATE threshold: http_req_failed rate below this [0.01]
//   MIN_CHECKS_RATE threshold: checks rate above this [0.99]
//   MAX_ERRORS      threshold: player_errors count at most this [0]

import http from 'k6/http';
import { check, sleep } from 'k6';
import { SharedArray } from 'k6/data';
import { Counter, Trend } from 'k6/metrics';

function num(name, dflt) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return dflt;
  const v = Number(raw);
  if (!Number.isFinite(v) || v < 0) throw new Error(`${name} must be a non-negative number, got "${raw}"`);
  return v;
}

const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const GRANTS = __ENV.GRANTS || 'grants.jsonl';
const VUS = Math.max(1, Math.floor(num('VUS', 10)));
const ITERATIONS = Math.max(1, Math.floor(num('ITERATIONS', 1)));
const DURATION = __ENV.DURATION || '';
const BEATS = Math.floor(num('BEATS', 3));
const MAX_POLL = num('MAX_POLL', 0);
const THINK = num('THINK', 1);
const MAX_DURATION = __ENV.MAX_DURATION || '10m';
const P99_MS = num('P99_MS', 500);
const P95_BEAT_MS = num('P95_BEAT_MS', 250);
const MAX_FAILED_RATE = num('MAX_FAILED_RATE', 0.01);
const MIN_CHECKS_RATE = num('MIN_CHECKS_RATE', 0.99);
const MAX_ERRORS = Math.floor(num('MAX_ERRORS', 0));

const grants = new SharedArray('grants', function () {
  const text = open(GRANTS).trim();
  const list = text.startsWith('[')
    ? JSON.parse(text)
    : text.split('\n').filter((l) => l.trim() !== '').map((l) => JSON.parse(l));
  return list.map(function (g, i) {
    if (!g || typeof g.user !== 'string' || typeof g.grant !== 'string') {
      throw new Error(`${GRANTS}: entry ${i + 1} has no "user" and "grant" strings`);
    }
    return { user: g.user, grant: g.grant };
  });
});
if (grants.length === 0) throw new Error(`${GRANTS}: no grants`);

const startsAdmitted = new Counter('starts_admitted');
const startsRejected = new Counter('starts_rejected'); // 409, expected
const heartbeatsOk = new Counter('heartbeats_ok');
const heartbeatsStopped = new Counter('heartbeats_stopped'); // 410, expected
const stopsOk = new Counter('stops_ok');
const playerErrors = new Counter('player_errors'); // anything unexpected
const sessionDuration = new Trend('session_duration', true); // start (201) to stop or 410

// 409 and 410 are outcomes the player handles, not failed requests.
http.setResponseCallback(http.expectedStatuses(200, 201, 204, 409, 410));

const scenario = DURATION
  ? { executor: 'constant-vus', vus: VUS, duration: DURATION, gracefulStop: '30s' }
  : { executor: 'per-vu-iterations', vus: VUS, iterations: ITERATIONS, maxDuration: MAX_DURATION };

export const options = {
  scenarios: { players: scenario },
  thresholds: {
    http_req_failed: [`rate<${MAX_FAILED_RATE}`],
    checks: [`rate>${MIN_CHECKS_RATE}`],
    http_req_duration: [`p(99)<${P99_MS}`],
    'http_req_duration{name:heartbeat}': [`p(95)<${P95_BEAT_MS}`],
    player_errors: [`count<=${MAX_ERRORS}`],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(95)', 'p(99)'],
};

function body(res) {
  try {
    return res.json();
  } catch (e) {
    return null;
  }
}

function auth(token) {
  return { Authorization: `Bearer ${token}` };
}

function error(op, res) {
  playerErrors.add(1, { op: op, status: String(res.status) });
  if (res.status === 0) console.warn(`${op}: ${res.error}`);
}

export function setup() {
  console.log(`players: ${VUS} VU(s) on ${BASE_URL}, ${grants.length} grant(s), ${BEATS} beat(s) per session`);
  return { grants: grants.length };
}

export default function () {
  const g = grants[(__ITER * VUS + __VU - 1) % grants.length];
  const sessions = `${BASE_URL}/v1/users/${encodeURIComponent(g.user)}/sessions`;

  const start = http.post(sessions, null, { headers: auth(g.grant), tags: { name: 'start' } });
  const sb = body(start);
  if (start.status === 409) {
    startsRejected.add(1, { reason: sb && sb.error ? sb.error : 'unknown' });
    check(start, {
      'start 409: limit error with the live sessions': () => sb !== null
        && (sb.error === 'limit_reached' || sb.error === 'group_limit_reached')
        && Array.isArray(sb.sessions) && sb.active >= sb.limit,
    });
    sleep(THINK);
    return;
  }
  const admitted = check(start, {
    'start 201: session_id, token, poll_after': (r) => r.status === 201 && sb !== null
      && typeof sb.session_id === 'string' && typeof sb.token === 'string' && sb.poll_after > 0
      && Array.isArray(sb.evicted),
  });
  if (!admitted) {
    error('start', start);
    sleep(THINK);
    return;
  }
  startsAdmitted.add(1);
  const startedAt = Date.now();
  const session = `${sessions}/${encodeURIComponent(sb.session_id)}`;
  let token = sb.token;
  let poll = sb.poll_after;

  for (let beat = 0; beat < BEATS; beat++) {
    sleep(MAX_POLL > 0 ? Math.min(poll, MAX_POLL) : poll);
    const hb = http.post(`${session}/heartbeat`, null, { headers: auth(token), tags: { name: 'heartbeat' } });
    const hbb = body(hb);
    if (hb.status === 410) {
      heartbeatsStopped.add(1, { reason: hbb && hbb.reason ? hbb.reason : 'unknown' });
      check(hb, {
        'heartbeat 410: session_stopped with a reason': () => hbb !== null
          && hbb.error === 'session_stopped' && typeof hbb.reason === 'string',
      });
      sessionDuration.add(Date.now() - startedAt);
      return; // stopped for good: no more heartbeats, nothing to stop
    }
    const renewed = check(hb, {
      'heartbeat 200: new token and poll_after': (r) => r.status === 200 && hbb !== null
        && typeof hbb.token === 'string' && hbb.poll_after > 0,
    });
    if (!renewed) {
      error('heartbeat', hb);
      break; // still try to free the slot below
    }
    heartbeatsOk.add(1);
    token = hbb.token;
    poll = hbb.poll_after;
  }

  const stop = http.del(session, null, { headers: auth(token), tags: { name: 'stop' } });
  if (check(stop, { 'stop 204': (r) => r.status === 204 })) stopsOk.add(1);
  else error('stop', stop);
  sessionDuration.add(Date.now() - startedAt);
}

export function teardown(data) {
  console.log(`players done (${data.grants} grant(s))`);
}
