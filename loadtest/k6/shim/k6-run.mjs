#!/usr/bin/env node
// k6-run.mjs: a small k6 compatibility shim for Node 20+, no npm dependencies.
//
// It runs a k6 script for real (real HTTP against a live server) where k6
// itself cannot be installed, implementing only the subset of k6 that our
// scripts use (see ../README.md for the exact list):
//
//   node loadtest/k6/shim/k6-run.mjs [run] [-e KEY=VALUE]... [-u VUS]
//        [-i ITERATIONS] [-d DURATION] [--summary-json FILE] [-q] script.js
//
// How it works
// - Every VU is a worker thread (vu.mjs) with its own module graph, so module-
//   scope state is per VU as in k6. VU 0, a separate worker, reads `options`
//   and runs setup() and teardown(). All VUs are initialised before setup()
//   runs and before any scenario starts, as in k6.
// - Module specifiers (`k6`, `k6/http`, `k6/data`, `k6/metrics`) are mapped to
//   the files in ./modules/ by a Node ESM loader hook (loader.mjs), registered
//   with `module.register` in each worker; the script itself is not rewritten.
// - The k6 HTTP API is synchronous. A VU thread posts the request to this
//   (main) thread over a MessagePort and blocks in Atomics.wait on a
//   SharedArrayBuffer; this thread, whose event loop stays free, does the
//   `fetch` (undici, keep-alive), posts the response back, then sets the flag
//   and notifies. sleep() is Atomics.wait with a timeout.
// - Samples (k6 built-in metrics and the script's custom ones) are sent to this
//   thread, aggregated, printed as an end-of-test summary, and the script's
//   `thresholds` are evaluated on them at the end of the run.
//
// Exit codes (as in k6): 0 passed; 99 a threshold failed; 104 invalid options
// or arguments; 105 interrupted (SIGINT/SIGTERM); 107 script error in init,
// setup() or teardown().

import { Worker } from 'node:worker_threads';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

const EXIT = { ok: 0, thresholds: 99, config: 104, aborted: 105, script: 107 };
const VU_URL = new URL('./vu.mjs', import.meta.url);

class ConfigError extends Error {}

// ---------------------------------------------------------------- arguments

const USAGE = `usage: node k6-run.mjs [run] [options] script.js
  -e, --env KEY=VALUE     add to __ENV (repeatable)
      --include-system-env-vars=false
                          leave the process environment out of __ENV (in by default, as in k6 run)
  -u, --vus N             with -i/-d: replace the script's scenarios (k6 rules)
  -i, --iterations N      shared iterations across the VUs
  -d, --duration D        constant VUs for D (e.g. 30s, 1m30s)
      --summary-json FILE write the summary, thresholds included, as JSON
  -q, --quiet             no progress lines`;

function parseArgs(argv) {
  const a = { env: {}, systemEnv: true, script: null, vus: null, iterations: null, duration: null, summaryJson: null, quiet: false };
  const args = [...argv];
  if (args[0] === 'run') args.shift();
  while (args.length) {
    const x = args.shift();
    const val = () => {
      if (!args.length) throw new ConfigError(`${x} needs a value`);
      return args.shift();
    };
    if (x === '-e' || x === '--env') {
      const kv = val();
      const i = kv.indexOf('=');
      if (i <= 0) throw new ConfigError(`-e expects KEY=VALUE, got "${kv}"`);
      a.env[kv.slice(0, i)] = kv.slice(i + 1);
    } else if (x === '-u' || x === '--vus') a.vus = positiveInt(val(), x);
    else if (x === '-i' || x === '--iterations') a.iterations = positiveInt(val(), x);
    else if (x === '-d' || x === '--duration') a.duration = parseDuration(val(), x);
    else if (x === '--summary-json') a.summaryJson = val();
    else if (x === '--include-system-env-vars' || x === '--include-system-env-vars=true') a.systemEnv = true;
    else if (x === '--include-system-env-vars=false') a.systemEnv = false;
    else if (x === '-q' || x === '--quiet') a.quiet = true;
    else if (x === '-h' || x === '--help') {
      console.log(USAGE);
      process.exit(0);
    } else if (x.startsWith('-')) throw new ConfigError(`unknown option ${x}\n${USAGE}`);
    else if (a.script) throw new ConfigError(`only one script, got "${a.script}" and "${x}"`);
    else a.script = x;
  }
  if (!a.script) throw new ConfigError(USAGE);
  return a;
}

function positiveInt(v, what) {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 1) throw new ConfigError(`${what}: expected a positive integer, got "${v}"`);
  return n;
}

// k6 durations: "1h2m3.5s", "500ms", "90s"; a bare number is milliseconds.
function parseDuration(v, what) {
  if (typeof v === 'number' && v >= 0) return v;
  const s = String(v).trim();
  if (/^\d+(\.\d+)?$/.test(s)) return Number(s);
  const re = /(\d+(?:\.\d+)?)(ms|us|µs|s|m|h)/gy;
  let total = 0;
  let m;
  let pos = 0;
  while ((m = re.exec(s))) {
    total += Number(m[1]) * { ms: 1, us: 0.001, 'µs': 0.001, s: 1000, m: 60000, h: 3600000 }[m[2]];
    pos = re.lastIndex;
  }
  if (pos === 0 || pos !== s.length) throw new ConfigError(`${what}: invalid duration "${v}"`);
  return total;
}

// ---------------------------------------------------------------- scenarios

const EXECUTORS = ['per-vu-iterations', 'shared-iterations', 'constant-vus'];

function scenariosFrom(options, cli) {
  let raw;
  if (cli.vus || cli.iterations || cli.duration) {
    const vus = cli.vus || options.vus || 1;
    if (cli.iterations) raw = { default: { executor: 'shared-iterations', vus, iterations: cli.iterations } };
    else if (cli.duration) raw = { default: { executor: 'constant-vus', vus, duration: cli.duration } };
    else raw = { default: { executor: 'per-vu-iterations', vus, iterations: 1 } };
  } else if (options.scenarios && Object.keys(options.scenarios).length) {
    raw = options.scenarios;
  } else if (options.iterations) {
    raw = { default: { executor: 'shared-iterations', vus: options.vus || 1, iterations: options.iterations } };
  } else if (options.duration) {
    raw = { default: { executor: 'constant-vus', vus: options.vus || 1, duration: options.duration } };
  } else {
    raw = { default: { executor: 'per-vu-iterations', vus: 1, iterations: 1 } };
  }
  return Object.entries(raw).map(([name, s]) => {
    const what = `scenario "${name}"`;
    if (!EXECUTORS.includes(s.executor)) {
      throw new ConfigError(`${what}: executor "${s.executor}" is not supported by the shim (supported: ${EXECUTORS.join(', ')})`);
    }
    const sc = {
      name,
      executor: s.executor,
      vus: s.vus === undefined ? 1 : positiveInt(s.vus, `${what} vus`),
      iterations: s.iterations === undefined ? 1 : positiveInt(s.iterations, `${what} iterations`),
      duration: s.duration === undefined ? null : parseDuration(s.duration, `${what} duration`),
      maxDuration: parseDuration(s.maxDuration ?? '10m', `${what} maxDuration`),
      gracefulStop: parseDuration(s.gracefulStop ?? '30s', `${what} gracefulStop`),
      startTime: parseDuration(s.startTime ?? '0s', `${what} startTime`),
      exec: s.exec || 'default',
      env: s.env || {},
    };
    if (sc.executor === 'constant-vus' && !(sc.duration > 0)) throw new ConfigError(`${what}: constant-vus needs a duration`);
    return sc;
  });
}

function describeScenario(sc) {
  const base = `${sc.name}: ${sc.vus} VU(s), `;
  if (sc.executor === 'per-vu-iterations') return `${base}${sc.iterations} iteration(s) each (per-vu-iterations, maxDuration ${fmtDuration(sc.maxDuration)})`;
  if (sc.executor === 'shared-iterations') return `${base}${sc.iterations} shared iteration(s) (shared-iterations, maxDuration ${fmtDuration(sc.maxDuration)})`;
  return `${base}for ${fmtDuration(sc.duration)} (constant-vus)`;
}

// --------------------------------------------------------------- thresholds

const AGG_RE = /^\s*(avg|min|max|med|count|rate|value|p\(\s*(\d+(?:\.\d+)?)\s*\))\s*(<=|>=|===|==|!=|<|>)\s*(-?\d+(?:\.\d+)?)\s*$/;
const AGG_FOR = {
  counter: ['count', 'rate'],
  gauge: ['value'],
  rate: ['rate'],
  trend: ['avg', 'min', 'max', 'med', 'p'],
};

function parseThresholds(th) {
  const out = [];
  for (const [key, list] of Object.entries(th || {})) {
    const km = /^([^{}\s]+)\s*(?:\{(.*)\})?\s*$/.exec(key);
    if (!km) throw new ConfigError(`threshold key "${key}" is malformed`);
    const filter = {};
    if (km[2] !== undefined) {
      for (const part of km[2].split(',')) {
        const i = part.indexOf(':');
        if (i <= 0) throw new ConfigError(`threshold key "${key}": tag filter "${part}" is not name:value`);
        filter[part.slice(0, i).trim()] = part.slice(i + 1).trim().replace(/^["']|["']$/g, '');
      }
    }
    for (const item of Array.isArray(list) ? list : [list]) {
      const expr = typeof item === 'string' ? item : item && item.threshold;
      const m = AGG_RE.exec(String(expr));
      if (!m) throw new ConfigError(`threshold "${key}": cannot parse "${expr}"`);
      out.push({
        key, metric: km[1], filter, expr: String(expr).trim(),
        agg: m[2] !== undefined ? `p(${m[2]})` : m[1], pct: m[2] !== undefined ? Number(m[2]) : null,
        op: m[3], limit: Number(m[4]),
        abortOnFail: Boolean(item && item.abortOnFail),
      });
    }
  }
  return out;
}

function compare(v, op, limit) {
  switch (op) {
    case '<': return v < limit;
    case '<=': return v <= limit;
    case '>': return v > limit;
    case '>=': return v >= limit;
    case '==': case '===': return v === limit;
    case '!=': return v !== limit;
    default: return false;
  }
}

// ------------------------------------------------------------------ metrics

const metrics = new Map(); // name -> { type, isTime, samples: [[value, tags]] }
let testStart = 0;
let testEnd = 0;

// k6's built-in metrics exist whether or not the script imports k6/http.
const BUILTIN = [
  ['checks', 'rate', false], ['group_duration', 'trend', true], ['iterations', 'counter', false],
  ['iteration_duration', 'trend', true], ['vus', 'gauge', false], ['vus_max', 'gauge', false],
  ['http_reqs', 'counter', false], ['http_req_duration', 'trend', true], ['http_req_waiting', 'trend', true],
  ['http_req_receiving', 'trend', true], ['http_req_failed', 'rate', false], ['data_sent', 'counter', false],
  ['data_received', 'counter', false],
];

function defineMetric(name, type, isTime) {
  if (!metrics.has(name)) metrics.set(name, { type, isTime, samples: [] });
}

function ingest(list) {
  for (const [name, value, tags] of list) {
    const m = metrics.get(name);
    if (m) m.samples.push([value, tags]);
  }
}

function matches(tags, filter) {
  for (const [k, v] of Object.entries(filter)) if (tags[k] !== v) return false;
  return true;
}

function percentile(sorted, pct) {
  // k6's TrendSink.P: linear interpolation between the closest ranks.
  if (sorted.length === 0) return 0;
  if (sorted.length === 1) return sorted[0];
  const i = (pct / 100) * (sorted.length - 1);
  const lo = sorted[Math.floor(i)];
  const hi = sorted[Math.ceil(i)];
  return lo + (hi - lo) * (i - Math.floor(i));
}

function aggregate(m, filter = {}, pcts = [90, 95]) {
  const vals = [];
  for (const [v, tags] of m.samples) if (matches(tags, filter)) vals.push(v);
  const n = vals.length;
  const secs = Math.max((testEnd - testStart) / 1000, 1e-9);
  switch (m.type) {
    case 'counter': {
      const count = vals.reduce((s, v) => s + v, 0);
      return { n, count, rate: count / secs };
    }
    case 'gauge':
      return { n, value: n ? vals[n - 1] : 0, min: n ? Math.min(...vals) : 0, max: n ? Math.max(...vals) : 0 };
    case 'rate': {
      const passes = vals.filter((v) => v !== 0).length;
      return { n, rate: n ? passes / n : 0, passes, fails: n - passes };
    }
    default: {
      const sorted = Float64Array.from(vals).sort();
      const out = {
        n,
        avg: n ? vals.reduce((s, v) => s + v, 0) / n : 0,
        min: n ? sorted[0] : 0,
        med: percentile(sorted, 50),
        max: n ? sorted[n - 1] : 0,
      };
      for (const p of pcts) out[`p(${p})`] = percentile(sorted, p);
      return out;
    }
  }
}

function evaluateThresholds(thresholds) {
  return thresholds.map((t) => {
    const m = metrics.get(t.metric);
    const res = { metric: t.key, expression: t.expr, ok: true, value: null, samples: 0, note: '' };
    if (!m) {
      res.note = 'no such metric';
      res.ok = false;
      return res;
    }
    const aggName = t.pct !== null ? 'p' : t.agg;
    if (!AGG_FOR[m.type].includes(aggName)) {
      res.ok = false;
      res.note = `"${t.agg}" does not apply to a ${m.type}`;
      return res;
    }
    const a = aggregate(m, t.filter, t.pct !== null ? [t.pct] : []);
    res.samples = a.n;
    if (a.n === 0 && m.type === 'rate') {
      // k6 (>= 0.38) evaluates thresholds of metrics without samples with
      // zero values, except a Rate, which has no value then and passes.
      res.note = 'no samples: a rate without samples passes (as in k6)';
      return res;
    }
    if (a.n === 0) res.note = 'no samples';
    res.value = a[t.agg];
    res.ok = compare(res.value, t.op, t.limit);
    res.isTime = m.isTime;
    res.type = m.type;
    return res;
  });
}

// --------------------------------------------------------------- formatting

function fmtDuration(ms) {
  if (ms === null || ms === undefined) return '-';
  if (ms === 0) return '0s';
  if (ms >= 60000) {
    const m = Math.floor(ms / 60000);
    const s = (ms - m * 60000) / 1000;
    return s ? `${m}m${+s.toFixed(1)}s` : `${m}m`;
  }
  if (ms >= 1000) return `${+(ms / 1000).toFixed(2)}s`;
  if (ms >= 1) return `${ms.toFixed(2)}ms`;
  return `${(ms * 1000).toFixed(2)}µs`;
}

function fmtBytes(b) {
  if (b >= 1e6) return `${(b / 1e6).toFixed(1)} MB`;
  if (b >= 1e3) return `${(b / 1e3).toFixed(1)} kB`;
  return `${b} B`;
}

function fmtNum(v) {
  return Number.isInteger(v) ? String(v) : v.toFixed(4).replace(/\.?0+$/, '');
}

function fmtValue(m, key, v) {
  if (m.type === 'rate' && key === 'rate') return `${(v * 100).toFixed(2)}%`;
  if (m.type === 'trend' || (m.type === 'gauge' && m.isTime)) return m.isTime ? fmtDuration(v) : fmtNum(v);
  return fmtNum(v);
}

function metricLine(name, m, a, stats, mark) {
  const label = `${mark} ${name}`.padEnd(42, '.');
  let text;
  if (m.type === 'counter') {
    const isData = name === 'data_sent' || name === 'data_received';
    text = isData ? `${fmtBytes(a.count)}  ${fmtBytes(Math.round(a.rate))}/s` : `${fmtNum(a.count)}  ${a.rate.toFixed(2)}/s`;
  } else if (m.type === 'rate') {
    text = `${(a.rate * 100).toFixed(2)}%  ✓ ${a.passes}  ✗ ${a.fails}`;
  } else if (m.type === 'gauge') {
    text = `${fmtValue(m, 'value', a.value)}  min=${fmtValue(m, 'value', a.min)}  max=${fmtValue(m, 'value', a.max)}`;
  } else {
    text = stats.map((s) => `${s}=${fmtValue(m, s, a[s])}`).join('  ');
  }
  return `  ${label}: ${text}`;
}

function trendStats(options) {
  const stats = options.summaryTrendStats || ['avg', 'min', 'med', 'max', 'p(90)', 'p(95)'];
  const pcts = [];
  for (const s of stats) {
    const m = /^p\((\d+(?:\.\d+)?)\)$/.exec(s);
    if (m) pcts.push(Number(m[1]));
    else if (!['avg', 'min', 'med', 'max', 'count'].includes(s)) throw new ConfigError(`summaryTrendStats: unsupported "${s}"`);
  }
  return { stats: stats.filter((s) => s !== 'count'), pcts };
}

function buildSummary(options, thresholdResults, extra) {
  const { stats, pcts } = trendStats(options);
  const lines = [];
  const json = { metrics: {}, checks: [], thresholds: thresholdResults, ...extra };

  // checks, by name in order of first appearance
  const checks = metrics.get('checks');
  if (checks && checks.samples.length) {
    const byName = new Map();
    for (const [v, tags] of checks.samples) {
      const key = `${tags.group || ''}\u0000${tags.check}`;
      if (!byName.has(key)) byName.set(key, { name: tags.check, group: tags.group || '', passes: 0, fails: 0 });
      const c = byName.get(key);
      if (v) c.passes += 1;
      else c.fails += 1;
    }
    for (const c of byName.values()) {
      json.checks.push(c);
      const where = c.group ? `${c.group} › ` : '';
      if (c.fails === 0) lines.push(`  ✓ ${where}${c.name}`);
      else {
        lines.push(`  ✗ ${where}${c.name}`);
        lines.push(`    ↳ ${Math.floor((100 * c.passes) / (c.passes + c.fails))}% — ✓ ${c.passes} / ✗ ${c.fails}`);
      }
    }
    lines.push('');
  }

  const thByMetric = new Map();
  for (const t of thresholdResults) {
    if (!thByMetric.has(t.metric)) thByMetric.set(t.metric, []);
    thByMetric.get(t.metric).push(t);
  }
  const mark = (key) => {
    const ts = thByMetric.get(key);
    if (!ts) return ' ';
    return ts.every((t) => t.ok) ? '✓' : '✗';
  };

  const names = [...metrics.keys()].filter((n) => metrics.get(n).samples.length || thByMetric.has(n)).sort();
  for (const name of names) {
    const m = metrics.get(name);
    const a = aggregate(m, {}, pcts);
    json.metrics[name] = { type: m.type, contains: m.isTime ? 'time' : name.startsWith('data_') ? 'data' : 'default', values: strip(a) };
    lines.push(metricLine(name, m, a, stats, mark(name)));
    // submetrics: those named in thresholds, and http_req_duration{expected_response:true} as k6 shows it
    const subs = new Set();
    for (const key of thByMetric.keys()) if (key !== name && key.startsWith(`${name}{`)) subs.add(key);
    if (name === 'http_req_duration' && m.samples.some(([, t]) => t.expected_response !== undefined)) subs.add('http_req_duration{expected_response:true}');
    for (const key of [...subs].sort()) {
      const filter = {};
      const km = /\{(.*)\}/.exec(key);
      for (const part of km[1].split(',')) {
        const i = part.indexOf(':');
        filter[part.slice(0, i).trim()] = part.slice(i + 1).trim().replace(/^["']|["']$/g, '');
      }
      const sa = aggregate(m, filter, pcts);
      json.metrics[key] = { type: m.type, contains: json.metrics[name].contains, values: strip(sa) };
      lines.push(metricLine(`  { ${km[1]} }`, m, sa, stats, mark(key)));
    }
  }
  return { lines, json };
}

function strip(a) {
  const { n, ...rest } = a;
  return rest;
}

// ------------------------------------------------------------------ workers

const handles = [];
let iterErrors = 0;
let interruptedVUs = 0;

function spawn({ role, vu, scriptPath, env, scenario, ctl }) {
  const worker = new Worker(VU_URL, { workerData: { role, vu, scriptPath, env, scenario, ctl } });
  const h = { role, vu, worker, ports: [], finished: false };
  let readyResolve;
  let readyReject;
  h.ready = new Promise((res, rej) => { readyResolve = res; readyReject = rej; });
  h.ready.catch(() => {}); // awaited where it matters; never an unhandled rejection
  h.done = new Promise((res) => { h.resolveDone = res; });
  h.waiters = new Map(); // message type -> resolver, for control-VU request/response
  worker.on('message', (m) => {
    switch (m.t) {
      case 'metric': defineMetric(m.name, m.type, m.isTime); break;
      case 'samples': ingest(m.list); break;
      case 'hub': attachHub(h, m.ctl, m.port); break;
      case 'ready': readyResolve(m); break;
      case 'init-error': readyReject(new Error(m.message)); break;
      case 'iter-error': iterErrors += 1; break;
      case 'done': finish(h); break;
      default: {
        const w = h.waiters.get(m.t);
        if (w) { h.waiters.delete(m.t); w(m); }
      }
    }
  });
  worker.on('error', (e) => {
    readyReject(e);
    if (!h.finished) console.error(`ERRO[shim] VU ${vu}: ${e && e.stack ? e.stack : e}`);
  });
  worker.on('exit', () => {
    readyReject(new Error(`VU ${vu} exited during init`));
    finish(h);
    for (const w of h.waiters.values()) w({ t: 'phase-error', message: `VU ${vu} exited` });
  });
  handles.push(h);
  return h;
}

function finish(h) {
  if (h.finished) return;
  h.finished = true;
  for (const p of h.ports) p.close();
  h.resolveDone();
}

function ask(h, msg, replyTypes) {
  return new Promise((resolve) => {
    for (const t of replyTypes) h.waiters.set(t, (m) => { for (const u of replyTypes) h.waiters.delete(u); resolve(m); });
    h.worker.postMessage(msg);
  });
}

// ---------------------------------------------------------------- HTTP hub

function attachHub(h, ctlBuf, port) {
  const ctl = new Int32Array(ctlBuf);
  h.ports.push(port);
  port.on('message', async (req) => {
    const res = await doFetch(req);
    port.postMessage(res);
    Atomics.store(ctl, 0, 1);
    Atomics.notify(ctl, 0);
  });
}

function canonical(name) {
  return name.split('-').map((p) => (p ? p[0].toUpperCase() + p.slice(1).toLowerCase() : p)).join('-');
}

const ERROR_CODES = {
  ECONNREFUSED: [1212, true], ECONNRESET: [1220, false], EPIPE: [1220, false], ENOTFOUND: [1101, true],
  EAI_AGAIN: [1101, true], EHOSTUNREACH: [1200, true], ENETUNREACH: [1200, true], ETIMEDOUT: [1211, true],
  UND_ERR_SOCKET: [1000, false], UND_ERR_CLOSED: [1000, false],
};

async function doFetch(req) {
  let bytesSent = req.method.length + req.url.length + 12;
  for (const [k, v] of Object.entries(req.headers)) bytesSent += k.length + v.length + 4;
  if (req.body !== undefined) bytesSent += typeof req.body === 'string' ? Buffer.byteLength(req.body) : req.body.byteLength;
  const t0 = performance.now();
  try {
    const res = await fetch(req.url, {
      method: req.method,
      headers: req.headers,
      body: req.body,
      redirect: req.redirects > 0 ? 'follow' : 'manual',
      signal: AbortSignal.timeout(req.timeoutMs),
    });
    const tHead = performance.now();
    let body = null;
    let bytesReceived = 0;
    if (req.discardBody) {
      bytesReceived = (await res.arrayBuffer()).byteLength;
    } else {
      body = await res.text();
      bytesReceived = Buffer.byteLength(body);
    }
    const tEnd = performance.now();
    const headers = {};
    for (const [k, v] of res.headers) {
      headers[canonical(k)] = v;
      bytesReceived += k.length + v.length + 4;
    }
    return {
      status: res.status, statusText: `${res.status} ${res.statusText}`, body, headers,
      url: res.url || req.url, proto: 'HTTP/1.1', error: '', errorCode: 0,
      timings: { blocked: 0, connecting: 0, tls_handshaking: 0, sending: 0, waiting: tHead - t0, receiving: tEnd - tHead, duration: tEnd - t0 },
      bytesSent, bytesReceived,
    };
  } catch (e) {
    const elapsed = performance.now() - t0;
    let code = 1000;
    let beforeSend = false;
    let message = e && e.message ? e.message : String(e);
    if (e && (e.name === 'TimeoutError' || e.name === 'AbortError')) {
      code = 1050;
      message = 'request timeout';
    } else {
      const c = e && e.cause && (e.cause.code || e.cause.name);
      if (c && ERROR_CODES[c]) [code, beforeSend] = ERROR_CODES[c];
      if (e && e.cause && e.cause.message) message = `${message}: ${e.cause.message}`;
    }
    const d = beforeSend ? 0 : elapsed;
    return {
      status: 0, statusText: '', body: null, headers: {}, url: req.url, proto: '', error: message, errorCode: code,
      timings: { blocked: 0, connecting: 0, tls_handshaking: 0, sending: 0, waiting: d, receiving: 0, duration: d },
      bytesSent: beforeSend ? 0 : bytesSent, bytesReceived: 0,
    };
  }
}

// Node loads its fetch implementation (undici, with its WebAssembly HTTP
// parser) lazily on the first request, which would add tens of milliseconds to
// the first request measured: do one request to a throwaway local server first.
async function warmUpFetch() {
  const srv = http.createServer((req, res) => res.end('ok'));
  try {
    await new Promise((resolve, reject) => srv.listen(0, '127.0.0.1', resolve).on('error', reject));
    const res = await fetch(`http://127.0.0.1:${srv.address().port}/`, { headers: { Connection: 'close' } });
    await res.text();
  } catch {
    // best effort
  } finally {
    srv.close();
  }
}

// --------------------------------------------------------------------- main

const sleepMs = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  let cli;
  try {
    cli = parseArgs(process.argv.slice(2));
  } catch (e) {
    console.error(e.message);
    return EXIT.config;
  }
  const scriptPath = path.resolve(cli.script);
  if (!fs.existsSync(scriptPath)) {
    console.error(`script not found: ${scriptPath}`);
    return EXIT.config;
  }
  const env = { ...(cli.systemEnv ? process.env : {}), ...cli.env };
  const log = (s) => { if (!cli.quiet) console.error(s); };

  // VU 0: options, setup(), teardown().
  const control = spawn({ role: 'control', vu: 0, scriptPath, env, scenario: null, ctl: null });
  let info;
  try {
    info = await control.ready;
  } catch (e) {
    console.error(`ERRO[shim] init of the script failed: ${e.message}`);
    return EXIT.script;
  }
  const options = info.options || {};
  if (options.handleSummary) log('WARN[shim] handleSummary() is ignored by the shim');

  let scenarios;
  let thresholds;
  try {
    scenarios = scenariosFrom(options, cli);
    thresholds = parseThresholds(options.thresholds);
    trendStats(options);
    for (const sc of scenarios) {
      if (!info.exports.includes(sc.exec)) throw new ConfigError(`scenario "${sc.name}": the script exports no function "${sc.exec}"`);
    }
    for (const [name, type, isTime] of BUILTIN) defineMetric(name, type, isTime);
    for (const t of thresholds) {
      const m = metrics.get(t.metric);
      if (!m) throw new ConfigError(`invalid threshold on "${t.key}": no metric named "${t.metric}" (custom metrics must be created in the init context)`);
      if (!AGG_FOR[m.type].includes(t.pct !== null ? 'p' : t.agg)) throw new ConfigError(`invalid threshold "${t.key}: ${t.expr}": "${t.agg}" does not apply to a ${m.type}`);
    }
  } catch (e) {
    console.error(`ERRO[shim] ${e.message}`);
    return EXIT.config;
  }

  console.log(`\n  script: ${path.relative(process.cwd(), scriptPath) || scriptPath}  (k6 shim, Node ${process.versions.node})`);
  for (const sc of scenarios) console.log(`  scenario ${describeScenario(sc)}`);
  console.log('');

  // Initialise every VU first, as k6 does.
  let nextVU = 1;
  for (const sc of scenarios) {
    sc.ctl = new Int32Array(new SharedArrayBuffer(8));
    sc.handles = [];
    for (let i = 0; i < sc.vus; i++) {
      sc.handles.push(spawn({
        role: 'vu', vu: nextVU++, scriptPath, env: { ...env, ...sc.env }, ctl: sc.ctl.buffer,
        scenario: { name: sc.name, executor: sc.executor, iterations: sc.iterations, exec: sc.exec },
      }));
    }
  }
  const initStart = performance.now();
  await warmUpFetch();
  try {
    await Promise.all(scenarios.flatMap((sc) => sc.handles.map((h) => h.ready)));
  } catch (e) {
    console.error(`ERRO[shim] VU init failed: ${e.message}`);
    return EXIT.script;
  }
  log(`INFO[shim] ${nextVU - 1} VU(s) initialised in ${fmtDuration(performance.now() - initStart)}`);

  let aborted = false;
  const abortAll = () => { for (const sc of scenarios) Atomics.store(sc.ctl, 0, 1); };
  process.on('SIGINT', () => {
    if (aborted) process.exit(EXIT.aborted);
    aborted = true;
    log('WARN[shim] interrupted: stopping the VUs (again to quit at once)');
    abortAll();
  });
  process.on('SIGTERM', () => { aborted = true; abortAll(); });

  testStart = performance.now();
  const runningVUs = () => handles.filter((h) => h.role === 'vu' && !h.finished).length;
  ingest([['vus_max', nextVU - 1, {}], ['vus', nextVU - 1, {}]]);
  const vusTicker = setInterval(() => ingest([['vus', runningVUs(), {}]]), 1000);

  let setupData;
  if (info.exports.includes('setup')) {
    const r = await ask(control, { t: 'setup' }, ['setup-done', 'phase-error']);
    if (r.t !== 'setup-done') {
      console.error(`ERRO[shim] setup() failed: ${r.message}`);
      return EXIT.script;
    }
    setupData = r.data;
  }

  let progress = null;
  if (!cli.quiet) {
    progress = setInterval(() => {
      const it = metrics.get('iterations');
      const running = runningVUs();
      log(`INFO[shim] ${fmtDuration(performance.now() - testStart)}: ${running} VU(s) running, ${it ? it.samples.length : 0} complete iteration(s)`);
    }, 5000);
  }

  await Promise.all(scenarios.map(async (sc) => {
    if (sc.startTime) await sleepMs(sc.startTime);
    for (const h of sc.handles) h.worker.postMessage({ t: 'run', data: setupData });
    const stopAfter = sc.executor === 'constant-vus' ? sc.duration : sc.maxDuration;
    const soft = setTimeout(() => {
      if (sc.executor !== 'constant-vus') log(`WARN[shim] scenario ${sc.name}: maxDuration ${fmtDuration(sc.maxDuration)} reached, stopping`);
      Atomics.store(sc.ctl, 0, 1);
    }, stopAfter);
    const hard = setTimeout(() => {
      for (const h of sc.handles) {
        if (!h.finished) {
          interruptedVUs += 1;
          h.worker.terminate();
        }
      }
      if (interruptedVUs) log(`WARN[shim] scenario ${sc.name}: gracefulStop over, ${interruptedVUs} VU(s) interrupted`);
    }, stopAfter + sc.gracefulStop);
    await Promise.all(sc.handles.map((h) => h.done));
    clearTimeout(soft);
    clearTimeout(hard);
  }));
  if (progress) clearInterval(progress);
  clearInterval(vusTicker);
  for (const sc of scenarios) for (const h of sc.handles) await h.worker.terminate();

  let code = EXIT.ok;
  if (info.exports.includes('teardown')) {
    const r = await ask(control, { t: 'teardown', data: setupData }, ['teardown-done', 'phase-error']);
    if (r.t !== 'teardown-done') {
      console.error(`ERRO[shim] teardown() failed: ${r.message}`);
      code = EXIT.script;
    }
  }
  await control.worker.terminate();
  testEnd = performance.now();

  const results = evaluateThresholds(thresholds);
  const failed = results.filter((t) => !t.ok);
  if (code === EXIT.ok && aborted) code = EXIT.aborted;
  if (code === EXIT.ok && failed.length) code = EXIT.thresholds;

  const { lines, json } = buildSummary(options, results, {
    passed: code === EXIT.ok,
    exit_code: code,
    duration_ms: testEnd - testStart,
    vus: nextVU - 1,
    iteration_errors: iterErrors,
    interrupted_vus: interruptedVUs,
  });
  console.log(lines.join('\n'));
  console.log('');
  console.log(`  run time ${fmtDuration(testEnd - testStart)}, ${nextVU - 1} VU(s), ${iterErrors} iteration(s) with an uncaught exception, ${interruptedVUs} VU(s) interrupted`);
  console.log('');
  if (results.length) {
    console.log('  THRESHOLDS');
    for (const t of results) {
      const m = metrics.get(t.metric.replace(/\{.*$/, ''));
      const shown = t.value === null ? t.note : `${t.expression.replace(/\s*(<=|>=|===|==|!=|<|>).*$/, '')}=${m ? fmtValue(m, t.expression.startsWith('rate') ? 'rate' : 'x', t.value) : t.value}${t.note ? ` (${t.note})` : ''}`;
      console.log(`  ${t.ok ? '✓' : '✗'} ${t.metric} ${t.expression}  → ${shown}`);
    }
    console.log('');
  }
  if (failed.length) console.error(`ERRO[shim] thresholds on metrics '${[...new Set(failed.map((t) => t.metric))].join("', '")}' have been crossed`);
  if (cli.summaryJson) fs.writeFileSync(cli.summaryJson, `${JSON.stringify(json, null, 2)}\n`);
  return code;
}

main().then(
  (code) => process.exit(code),
  (e) => {
    console.error(`ERRO[shim] ${e && e.stack ? e.stack : e}`);
    process.exit(EXIT.script);
  },
);
