// k6 shim: the `k6` module — check, sleep, group, fail.
import { state, emit, baseTags, sleepSeconds, defineMetric } from '../runtime.mjs';

defineMetric('checks', 'rate');
defineMetric('group_duration', 'trend', true);

export function check(value, sets, tags = {}) {
  let all = true;
  for (const [name, cond] of Object.entries(sets || {})) {
    const ok = Boolean(typeof cond === 'function' ? cond(value) : cond);
    if (!ok) all = false;
    emit('checks', ok ? 1 : 0, { ...baseTags(), group: state.groupPath, ...tags, check: name });
  }
  return all;
}

export function sleep(seconds) {
  sleepSeconds(seconds);
}

export function group(name, fn) {
  if (typeof name !== 'string' || name === '' || name.includes('::')) {
    throw new Error('group name must be a non-empty string without "::"');
  }
  const outer = state.groupPath;
  state.groupPath = `${outer}::${name}`;
  const t0 = performance.now();
  try {
    return fn();
  } finally {
    emit('group_duration', performance.now() - t0, { ...baseTags(), group: state.groupPath });
    state.groupPath = outer;
  }
}

export function fail(message = '') {
  throw new Error(message);
}

export default { check, sleep, group, fail };
