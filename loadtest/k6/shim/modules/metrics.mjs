// k6 shim: the `k6/metrics` module — Counter, Gauge, Rate, Trend.
import { emit, baseTags, defineMetric } from '../runtime.mjs';

class Metric {
  constructor(type, name, isTime = false) {
    defineMetric(name, type, Boolean(isTime));
    this.name = name;
    this.type = type;
  }

  add(value, tags = {}) {
    let v = value;
    if (this.type === 'rate') v = value ? 1 : 0;
    else if (typeof v === 'boolean') v = v ? 1 : 0;
    v = Number(v);
    if (!Number.isFinite(v)) {
      throw new Error(`${this.name}: "${value}" is not a number`);
    }
    emit(this.name, v, { ...baseTags(), ...stringTags(tags) });
  }
}

function stringTags(tags) {
  const out = {};
  for (const [k, v] of Object.entries(tags || {})) out[k] = String(v);
  return out;
}

export class Counter extends Metric {
  constructor(name) {
    super('counter', name);
  }
}

export class Gauge extends Metric {
  constructor(name, isTime = false) {
    super('gauge', name, isTime);
  }
}

export class Rate extends Metric {
  constructor(name) {
    super('rate', name);
  }
}

export class Trend extends Metric {
  constructor(name, isTime = false) {
    super('trend', name, isTime);
  }
}

export default { Counter, Gauge, Rate, Trend };
