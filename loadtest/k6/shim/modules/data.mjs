// k6 shim: the `k6/data` module — SharedArray.
//
// k6 runs the callback once and shares a read-only copy between VUs. Here
// each VU is its own worker thread, so the callback runs once per VU (at init,
// like in k6) and the result is a frozen JSON copy: the same observable
// behaviour, just without the memory sharing.
import { state } from '../runtime.mjs';

const cache = new Map();

export class SharedArray {
  constructor(name, fn) {
    if (typeof name !== 'string' || name === '') {
      throw new Error('SharedArray: a non-empty name is required');
    }
    if (state.stage !== 'init') {
      throw new Error('SharedArray: can only be created in the init context');
    }
    if (cache.has(name)) return cache.get(name);
    if (typeof fn !== 'function') {
      throw new Error('SharedArray: the second argument must be a function returning an array');
    }
    const data = fn();
    if (!Array.isArray(data)) {
      throw new Error('SharedArray: the function must return an array');
    }
    const copy = JSON.parse(JSON.stringify(data));
    for (const item of copy) {
      if (item && typeof item === 'object') Object.freeze(item);
    }
    Object.freeze(copy);
    cache.set(name, copy);
    return copy;
  }
}

export default { SharedArray };
