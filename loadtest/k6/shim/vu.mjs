// One worker thread of the k6 shim: either a VU (runs the scenario's exec
// function in a loop) or the control VU 0 (reads `options`, runs setup() and
// teardown()). Like k6, every VU has its own JS runtime and so its own copy of
// the script's module-scope state: here, its own worker thread and module
// graph. See k6-run.mjs for the protocol with the main thread.
import { parentPort, workerData } from 'node:worker_threads';
import { register } from 'node:module';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { state, emit, flush, baseTags, defineMetric } from './runtime.mjs';

register('./loader.mjs', import.meta.url);

const { role, vu, scriptPath, env, scenario, ctl: ctlBuf } = workerData;
const scriptDir = path.dirname(scriptPath);

state.vu = vu;
state.iter = 0;
state.stage = 'init';

globalThis.__ENV = env;
Object.defineProperty(globalThis, '__VU', { get: () => state.vu, configurable: true });
Object.defineProperty(globalThis, '__ITER', { get: () => state.iter, configurable: true });
globalThis.open = function open(filePath, mode) {
  if (state.stage !== 'init') {
    throw new Error('The "open()" function is only available in the init stage (i.e. the global scope)');
  }
  if (typeof filePath !== 'string' || filePath === '') {
    throw new Error("open() can't be used with an empty filename");
  }
  // Like k6: a relative path is relative to the script's directory.
  const full = path.resolve(scriptDir, filePath);
  const buf = fs.readFileSync(full);
  if (mode === 'b') return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength);
  return buf.toString('utf8');
};

function errText(e) {
  return e && e.stack ? e.stack : String(e);
}

let mod;
try {
  mod = await import(pathToFileURL(scriptPath).href);
} catch (e) {
  parentPort.postMessage({ t: 'init-error', message: errText(e) });
  process.exit(1); // ends this worker thread only
}

defineMetric('iterations', 'counter');
defineMetric('iteration_duration', 'trend', true);

const exportsList = Object.keys(mod).filter((k) => typeof mod[k] === 'function');

if (role === 'control') {
  let options = {};
  try {
    options = mod.options === undefined ? {} : JSON.parse(JSON.stringify(mod.options));
  } catch (e) {
    parentPort.postMessage({ t: 'init-error', message: `options are not JSON-serializable: ${errText(e)}` });
    process.exit(1);
  }
  parentPort.postMessage({ t: 'ready', exports: exportsList, options });
  parentPort.on('message', (m) => {
    if (m.t === 'setup') {
      state.stage = 'setup';
      try {
        const data = mod.setup(undefined);
        flush();
        parentPort.postMessage({ t: 'setup-done', data: data === undefined ? undefined : JSON.stringify(data) });
      } catch (e) {
        flush();
        parentPort.postMessage({ t: 'phase-error', phase: 'setup', message: errText(e) });
      }
    } else if (m.t === 'teardown') {
      state.stage = 'teardown';
      try {
        mod.teardown(m.data === undefined ? undefined : JSON.parse(m.data));
        flush();
        parentPort.postMessage({ t: 'teardown-done' });
      } catch (e) {
        flush();
        parentPort.postMessage({ t: 'phase-error', phase: 'teardown', message: errText(e) });
      }
    }
  });
} else {
  parentPort.postMessage({ t: 'ready', exports: exportsList });
  parentPort.once('message', async (m) => {
    if (m.t !== 'run') return;
    const fn = mod[scenario.exec];
    const ctl = new Int32Array(ctlBuf); // [0]: stop flag, [1]: shared-iterations counter
    state.scenario = scenario.name;
    state.stage = 'vu';
    for (let i = 0; ; i++) {
      if (Atomics.load(ctl, 0) !== 0) break;
      if (scenario.executor === 'per-vu-iterations' && i >= scenario.iterations) break;
      if (scenario.executor === 'shared-iterations' && Atomics.add(ctl, 1, 1) >= scenario.iterations) break;
      state.iter = i;
      state.groupPath = '';
      const data = m.data === undefined ? undefined : JSON.parse(m.data);
      const t0 = performance.now();
      try {
        const r = fn(data);
        if (r && typeof r.then === 'function') await r;
      } catch (e) {
        console.error(`ERRO[shim] vu=${vu} iter=${i} scenario=${scenario.name}: ${errText(e)}`);
        parentPort.postMessage({ t: 'iter-error' });
      }
      const tags = baseTags();
      emit('iteration_duration', performance.now() - t0, tags);
      emit('iterations', 1, tags);
      flush();
    }
    flush();
    parentPort.postMessage({ t: 'done' });
  });
}
