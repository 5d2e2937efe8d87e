// Per-VU runtime of the k6 shim: lives in one worker thread (one VU, or the
// VU 0 that runs setup/teardown) and is shared by the shim's k6 modules.
//
// - Metric samples are buffered here and flushed to the main thread, which
//   aggregates them and evaluates thresholds.
// - HTTP is synchronous, as in k6: the request goes to the main thread over a
//   MessagePort; this thread blocks in Atomics.wait on a SharedArrayBuffer
//   until the main thread (which does the real `fetch`) has posted the
//   response back and set the flag; the response is then taken off the port
//   with receiveMessageOnPort.

import { parentPort, receiveMessageOnPort } from 'node:worker_threads';

export const state = {
  vu: 0,
  iter: 0,
  stage: 'init', // init | setup | vu | teardown
  scenario: '',
  groupPath: '', // k6 group tag: '' at root, '::a::b' inside groups
  responseCallback: undefined, // undefined: k6 default (200-399 expected)
};

const metricDefs = new Map();
let buffer = [];

export function defineMetric(name, type, isTime = false) {
  if (typeof name !== 'string' || !/^[a-zA-Z_][a-zA-Z0-9_]{0,127}$/.test(name)) {
    throw new Error(`invalid metric name "${name}"`);
  }
  const prev = metricDefs.get(name);
  if (prev) {
    if (prev.type !== type) {
      throw new Error(`metric "${name}" already defined as a ${prev.type}, not a ${type}`);
    }
    return;
  }
  metricDefs.set(name, { type, isTime });
  parentPort.postMessage({ t: 'metric', name, type, isTime });
}

// Tags every sample gets, as in k6 (scenario; group where relevant).
export function baseTags() {
  const tags = {};
  if (state.scenario) tags.scenario = state.scenario;
  return tags;
}

export function emit(name, value, tags) {
  if (state.stage === 'init') {
    throw new Error(`metric "${name}": samples cannot be added in the init context`);
  }
  buffer.push([name, Number(value), tags]);
  if (buffer.length >= 2000) flush();
}

export function flush() {
  if (buffer.length === 0) return;
  parentPort.postMessage({ t: 'samples', list: buffer });
  buffer = [];
}

// ---- blocking sleep -------------------------------------------------------

const sleepCell = new Int32Array(new SharedArrayBuffer(4));

export function sleepSeconds(seconds) {
  const ms = Number(seconds) * 1000;
  if (!(ms > 0)) return;
  Atomics.wait(sleepCell, 0, 0, ms);
}

// ---- synchronous HTTP through the main thread --------------------------------

let hub = null;

function connectHub() {
  const ctl = new Int32Array(new SharedArrayBuffer(4));
  const { port1, port2 } = new MessageChannel();
  parentPort.postMessage({ t: 'hub', ctl: ctl.buffer, port: port2 }, [port2]);
  hub = { ctl, port: port1 };
}

export function syncRequest(req) {
  if (!hub) connectHub();
  const { ctl, port } = hub;
  Atomics.store(ctl, 0, 0);
  port.postMessage(req);
  for (;;) {
    Atomics.wait(ctl, 0, 0, 1000);
    const got = receiveMessageOnPort(port);
    if (got) return got.message;
    if (Atomics.load(ctl, 0) !== 0) {
      // Flag set but message not visible yet: give it a moment.
      Atomics.wait(sleepCell, 0, 0, 1);
    }
  }
}
