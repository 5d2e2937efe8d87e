// k6 shim: the `k6/http` module — synchronous request/get/head/post/put/
// patch/del/options, expectedStatuses, setResponseCallback.
//
// Per request it emits the k6 built-in metrics http_reqs, http_req_duration,
// http_req_waiting, http_req_receiving, http_req_failed (unless the response
// callback is null), data_sent and data_received, tagged like k6 (method,
// url, name, status, expected_response, error_code, scenario, group, plus
// params.tags).
import { state, emit, baseTags, syncRequest, defineMetric } from '../runtime.mjs';

defineMetric('http_reqs', 'counter');
defineMetric('http_req_duration', 'trend', true);
defineMetric('http_req_waiting', 'trend', true);
defineMetric('http_req_receiving', 'trend', true);
defineMetric('http_req_failed', 'rate');
defineMetric('data_sent', 'counter');
defineMetric('data_received', 'counter');

const EXPECTED = Symbol('k6shim.expectedStatuses');

export function expectedStatuses(...statuses) {
  const parts = statuses.map((s) => {
    if (Number.isInteger(s)) return { min: s, max: s };
    if (s && Number.isInteger(s.min) && Number.isInteger(s.max)) return { min: s.min, max: s.max };
    throw new Error(`expectedStatuses: ${JSON.stringify(s)} is neither a status nor {min, max}`);
  });
  const cb = (status) => parts.some((p) => status >= p.min && status <= p.max);
  cb[EXPECTED] = parts;
  return cb;
}

const DEFAULT_CALLBACK = expectedStatuses({ min: 200, max: 399 });

export function setResponseCallback(cb) {
  if (cb !== null && typeof cb !== 'function') {
    throw new Error('setResponseCallback: expects the result of http.expectedStatuses() or null');
  }
  state.responseCallback = cb;
}

function parseTimeout(t) {
  if (t === undefined || t === null) return 60000;
  if (typeof t === 'number') return t;
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(String(t).trim());
  if (!m) throw new Error(`invalid timeout "${t}"`);
  const mult = { ms: 1, s: 1000, m: 60000, h: 3600000 }[m[2] || 'ms'];
  return Number(m[1]) * mult;
}

function encodeBody(body, headers) {
  if (body === undefined || body === null) return undefined;
  if (typeof body === 'string') return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body.slice(0));
  if (ArrayBuffer.isView(body)) return new Uint8Array(body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength));
  if (typeof body === 'object') {
    if (!Object.keys(headers).some((h) => h.toLowerCase() === 'content-type')) {
      headers['Content-Type'] = 'application/x-www-form-urlencoded';
    }
    const form = new URLSearchParams();
    for (const [k, v] of Object.entries(body)) form.append(k, String(v));
    return form.toString();
  }
  return String(body);
}

function jsonSelect(value, selector) {
  if (selector === undefined) return value;
  let cur = value;
  for (const part of String(selector).split('.')) {
    if (cur === null || cur === undefined) return undefined;
    if (part === '#' && Array.isArray(cur)) return cur.length;
    cur = cur[part];
  }
  return cur;
}

class Response {
  constructor(raw, request) {
    Object.assign(this, {
      status: raw.status,
      status_text: raw.statusText,
      body: raw.body,
      headers: raw.headers,
      timings: raw.timings,
      error: raw.error,
      error_code: raw.errorCode,
      url: raw.url,
      proto: raw.proto,
      remote_ip: '',
      remote_port: 0,
      cookies: {},
      request,
    });
  }

  json(selector) {
    if (typeof this.body !== 'string') throw new Error('json(): the response has no body');
    return jsonSelect(JSON.parse(this.body), selector);
  }

  html() {
    throw new Error('k6 shim: Response.html() is not supported');
  }
}

export function request(method, url, body, params = {}) {
  if (state.stage === 'init') {
    throw new Error('Making http requests in the init context is not supported');
  }
  params = params || {};
  method = String(method).toUpperCase();
  url = String(url);
  const headers = { 'User-Agent': 'k6-shim/streamcap (node)' };
  for (const [k, v] of Object.entries(params.headers || {})) headers[k] = String(v);
  const payload = encodeBody(body, headers);
  const timeoutMs = parseTimeout(params.timeout);
  const raw = syncRequest({
    method,
    url,
    headers,
    body: payload,
    timeoutMs,
    redirects: params.redirects === undefined ? 10 : Number(params.redirects),
    discardBody: params.responseType === 'none',
  });

  const callback = params.responseCallback !== undefined ? params.responseCallback
    : state.responseCallback !== undefined ? state.responseCallback : DEFAULT_CALLBACK;

  const tags = {
    ...baseTags(),
    group: state.groupPath,
    method,
    url,
    name: url,
    status: String(raw.status),
    proto: raw.proto,
  };
  if (raw.errorCode) tags.error_code = String(raw.errorCode);
  for (const [k, v] of Object.entries(params.tags || {})) tags[k] = String(v);
  let expected;
  if (callback !== null) {
    expected = Boolean(callback(raw.status));
    tags.expected_response = String(expected);
  }

  emit('http_reqs', 1, tags);
  emit('http_req_duration', raw.timings.duration, tags);
  emit('http_req_waiting', raw.timings.waiting, tags);
  emit('http_req_receiving', raw.timings.receiving, tags);
  if (callback !== null) emit('http_req_failed', expected ? 0 : 1, tags);
  emit('data_sent', raw.bytesSent, tags);
  emit('data_received', raw.bytesReceived, tags);

  return new Response(raw, { method, url, headers, body: payload === undefined ? '' : payload });
}

export const get = (url, params) => request('GET', url, null, params);
export const head = (url, params) => request('HEAD', url, null, params);
export const post = (url, body, params) => request('POST', url, body, params);
export const put = (url, body, params) => request('PUT', url, body, params);
export const patch = (url, body, params) => request('PATCH', url, body, params);
export const del = (url, body, params) => request('DELETE', url, body, params);
export const options = (url, body, params) => request('OPTIONS', url, body, params);

export function batch() {
  throw new Error('k6 shim: http.batch() is not supported');
}

export default {
  request, get, head, post, put, patch, del, options, batch, expectedStatuses, setResponseCallback,
};
