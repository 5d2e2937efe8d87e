// streamcap-player.js: the player side of streamcap (docs/spec.md §4, §6), as a small
// dependency-free ES module for browsers and Node 20+.
//
//   import { StreamcapPlayer } from './streamcap-player.js';
//   const player = new StreamcapPlayer({
//     baseUrl: 'https://streams.example.com', user: 'alice',
//     grant: () => fetch('/my-backend/streamcap-grant').then((r) => r.text()),
//     onStopped: ({ reason, by }) => showStopped(reason, by),
//   });
//   const r = await player.start();
//   if (r.ok) play(); else if (r.status === 409) showTooMany(r.sessions);
//
// What it does for you:
// - start (201 / 409 with the live sessions / errors), `?replace=`;
// - heartbeats every `poll_after` seconds with ±10 % jitter, always with the
//   newest lease token;
// - on a network error or 5xx: keeps playing and retries with short backoff
//   until the lease's `expires_at`, then stops (reason `expired`);
// - on 410 / 401 / 403: stops for good and reports `reason` and `by`;
// - stop() at the end, and on `pagehide` with `fetch(..., {keepalive: true})`;
// - kick(sessionId): stops another session of the same user with the grant;
// - signOutEverywhere(): stops every session of the user with the grant;
// - the licence gate: licenceUrl(system) and licenceAnswer(answer), where a
//   licence answer that renews the lease counts as a heartbeat, and
//   attachShaka(player, shakaPlayer) that routes a Shaka Player's licence
//   requests through the gate with the lease and stops playback on 410/401/403.

/** @typedef {'idle'|'starting'|'playing'|'retrying'|'refused'|'error'|'stopping'|'stopped'} PlayerState */

/**
 * A session as the server lists it (docs/spec.md §4 "session view"). Times are Unix
 * seconds; absent optional fields are `null`. In the `by` of a kick,
 * `session_id` and `expires_at` are `null` and `started_at` is the kick's time.
 * @typedef {object} SessionView
 * @property {string|null} session_id
 * @property {number} started_at
 * @property {number|null} expires_at
 * @property {string|null} device
 * @property {string|null} label
 * @property {string|null} content
 * @property {string|null} group
 */

/**
 * The result of {@link StreamcapPlayer#start}.
 * @typedef {object} StartResult
 * @property {boolean} ok true on 201: playing
 * @property {number} status HTTP status, 0 for a network error or timeout
 * @property {string} [sessionId] on 201
 * @property {number} [active] on 201 and 409: live sessions (or devices) of the user
 * @property {number} [limit] on 201 and 409: the limit (the group's limit for `group_limit_reached`)
 * @property {string[]} [evicted] on 201: sessions this start pushed out (`evict_oldest`)
 * @property {SessionView[]} [sessions] on 409: the sessions to offer to stop
 * @property {string} [error] error code: `limit_reached`, `group_limit_reached`, `invalid_grant`,
 *   `forbidden`, `over_capacity`, …, or `network`
 * @property {string} [message] human text from the server (or the network error)
 * @property {number} [retryAfter] seconds, when the server sent `Retry-After` and it is readable
 */

/**
 * Why a session ended: passed to `onStopped` and kept as `player.stopInfo`.
 * @typedef {object} StopInfo
 * @property {string} reason `evicted`, `limit_exceeded`, `replaced`, `ended`, `kicked` (from a 410);
 *   `invalid_token` (401); `forbidden` (403); `expired` (no answer before the lease's expiry);
 *   `ended` also for a local stop()
 * @property {SessionView|null} by the session (or kicker) that caused it, for `evicted`, `replaced`, `kicked`
 * @property {number} status HTTP status of the answer that ended it (0: none / network)
 * @property {boolean} local true when this player ended it itself (stop() or expiry)
 * @property {string} [error] the server's error code
 * @property {string} [message] human text
 */

const DEFINITIVE = new Map([
  [410, null], // reason comes from the body
  [401, 'invalid_token'],
  [403, 'forbidden'],
]);

const ACTIVE = new Set(['starting', 'playing', 'retrying', 'stopping']);

/**
 * One player's session with a streamcap server.
 *
 * Events (both `options.onX` callbacks and `player.on('x', fn)`):
 * - `state` `{state, previous}`: every state change;
 * - `started` {@link StartResult}: a 201;
 * - `refused` {@link StartResult}: a 409, with `sessions`, `limit`, `active`;
 * - `error` {@link StartResult}: a start that failed otherwise (401, 403, 5xx, network…);
 * - `heartbeat` `{sessionId, pollAfter, expiresAt, recovered, via}`: the lease was renewed, by a heartbeat
 *   (`via: 'heartbeat'`) or by a licence request through the gate (`via: 'licence'`);
 * - `retry` `{attempt, status, error, delayMs, expiresAt}`: a heartbeat failed transiently;
 * - `schedule` `{at, inMs, kind}`: the next heartbeat (`kind` `heartbeat` or `retry`) is due at `at` (ms, local clock);
 * - `stopped` {@link StopInfo}: the session ended, for whatever reason.
 */
export class StreamcapPlayer {
  /** @type {PlayerState} */
  state = 'idle';
  /** @type {string|null} the current session's id */
  sessionId = null;
  /** @type {string|null} the newest lease token */
  token = null;
  /** @type {number|null} seconds between heartbeats, from the server */
  pollAfter = null;
  /** @type {number|null} the newest token's expiry, Unix seconds (server clock) */
  expiresAt = null;
  /** @type {number|null} when the next heartbeat (or retry) is due, ms on the local clock */
  nextBeatAt = null;
  /** @type {StartResult|null} the last 409, while `state` is `refused` */
  refusal = null;
  /** @type {StopInfo|null} why the last session ended */
  stopInfo = null;

  #o;
  #fetch;
  #setTimeout;
  #clearTimeout;
  #now;
  #random;
  #listeners = new Map();
  #gen = 0; // bumped whenever the current loop must be abandoned
  #timer = null;
  #attempt = 0;
  #deadline = 0; // local ms after which retries give up
  #unloadTarget = null;
  #onPagehide = null;

  /**
   * @param {object} options
   * @param {string} options.baseUrl the API's origin (and path prefix, if any), e.g. `https://cap.example.com`
   * @param {string} options.user the user, as in the grant's `sub`
   * @param {string | (() => string | Promise<string>)} options.grant the grant from your backend, or a
   *   function returning a fresh one (called for every start, kick and list: grants expire)
   * @param {number} [options.jitter=0.1] heartbeat jitter, a fraction of `poll_after` (±)
   * @param {number} [options.retryBaseMs=500] first retry delay after a failed heartbeat (doubles each time)
   * @param {number} [options.retryMaxMs=5000] longest retry delay (also never more than `poll_after`)
   * @param {number} [options.requestTimeoutMs=10000] a request without an answer by then counts as a network error
   * @param {EventTarget|null} [options.unloadTarget] where to listen for `pagehide` to stop with a keepalive
   *   request; default `globalThis` in a browser (`window`), none in Node. Pass `null` to disable.
   * @param {typeof fetch} [options.fetch] injectable `fetch`
   * @param {typeof setTimeout} [options.setTimeout] injectable timer
   * @param {typeof clearTimeout} [options.clearTimeout] injectable timer
   * @param {() => number} [options.now] injectable clock, ms (default `Date.now`)
   * @param {() => number} [options.random] injectable `Math.random`
   * @param {(e: {state: PlayerState, previous: PlayerState}) => void} [options.onState]
   * @param {(r: StartResult) => void} [options.onStarted]
   * @param {(r: StartResult) => void} [options.onRefused]
   * @param {(r: StartResult) => void} [options.onError]
   * @param {(e: object) => void} [options.onHeartbeat]
   * @param {(e: object) => void} [options.onRetry]
   * @param {(e: object) => void} [options.onSchedule]
   * @param {(s: StopInfo) => void} [options.onStopped]
   */
  constructor(options) {
    if (!options || !options.baseUrl || !options.user || !options.grant) {
      throw new TypeError('StreamcapPlayer needs baseUrl, user and grant');
    }
    const g = globalThis;
    this.#o = {
      jitter: 0.1,
      retryBaseMs: 500,
      retryMaxMs: 5000,
      requestTimeoutMs: 10000,
      ...options,
      baseUrl: String(options.baseUrl).replace(/\/+$/, ''),
    };
    // Bound, so that a browser never sees `this` = the player ("Illegal invocation").
    this.#fetch = options.fetch ?? g.fetch.bind(g);
    this.#setTimeout = options.setTimeout ?? g.setTimeout.bind(g);
    this.#clearTimeout = options.clearTimeout ?? g.clearTimeout.bind(g);
    this.#now = options.now ?? Date.now;
    this.#random = options.random ?? Math.random;

    const target = 'unloadTarget' in options
      ? options.unloadTarget
      : (typeof g.window !== 'undefined' && g.window === g && typeof g.addEventListener === 'function' ? g : null);
    if (target) {
      this.#unloadTarget = target;
      this.#onPagehide = () => {
        if (this.sessionId && (this.state === 'playing' || this.state === 'retrying')) {
          this.stop({ keepalive: true });
        }
      };
      target.addEventListener('pagehide', this.#onPagehide);
    }
  }

  /**
   * Listens for an event (see the class description).
   * @param {string} type
   * @param {(detail: any) => void} fn
   * @returns {() => void} removes the listener
   */
  on(type, fn) {
    if (!this.#listeners.has(type)) this.#listeners.set(type, new Set());
    this.#listeners.get(type).add(fn);
    return () => this.#listeners.get(type)?.delete(fn);
  }

  /**
   * Starts a session (docs/spec.md §4 start). On 201 the heartbeat loop runs until the
   * session ends. A 409 is not an exception: the result carries `sessions`,
   * `limit` and `active` so the page can offer "stop one of these".
   * @param {{replace?: string}} [opts] `replace`: a session of the same user to stop
   *   (reason `replaced`) in the same atomic step, e.g. the previous episode.
   * @returns {Promise<StartResult>} never rejects for HTTP or network failures
   * @throws {Error} when called while starting, playing, retrying or stopping
   */
  async start(opts = {}) {
    if (ACTIVE.has(this.state)) throw new Error(`cannot start while ${this.state}`);
    const gen = ++this.#gen;
    this.refusal = null;
    this.sessionId = null;
    this.token = null;
    this.#setState('starting');
    let grant;
    try {
      grant = await this.#grant();
    } catch (e) {
      if (gen !== this.#gen) return { ok: false, status: 0, error: 'aborted', message: 'stopped during start' };
      const r = { ok: false, status: 0, error: 'no_grant', message: String(e?.message ?? e) };
      this.#setState('error');
      this.#emit('error', r);
      return r;
    }
    const q = opts.replace ? `?replace=${encodeURIComponent(opts.replace)}` : '';
    const res = await this.#call('POST', `${this.#userPath()}/sessions${q}`, grant);
    const b = res.body ?? {};

    if (gen !== this.#gen) {
      // stop() was called meanwhile: do not leave an orphan holding a slot.
      if (res.status === 201 && b.token) {
        this.#call('DELETE', `${this.#userPath()}/sessions/${encodeURIComponent(b.session_id)}`, b.token);
      }
      return { ok: false, status: 0, error: 'aborted', message: 'stopped during start' };
    }

    if (res.status === 201 && b.token && b.session_id) {
      this.sessionId = b.session_id;
      this.stopInfo = null;
      this.#attempt = 0;
      this.#renew(b);
      const r = {
        ok: true, status: 201, sessionId: b.session_id, active: b.active, limit: b.limit,
        evicted: b.evicted ?? [], pollAfter: b.poll_after, expiresAt: b.expires_at,
      };
      this.#setState('playing');
      this.#emit('started', r);
      this.#scheduleBeat(gen, this.#jittered(this.pollAfter * 1000), 'heartbeat');
      return r;
    }
    if (res.status === 409) {
      const r = {
        ok: false, status: 409, error: b.error ?? 'limit_reached', message: b.message ?? '',
        limit: b.limit, active: b.active, sessions: Array.isArray(b.sessions) ? b.sessions : [],
      };
      this.refusal = r;
      this.#setState('refused');
      this.#emit('refused', r);
      return r;
    }
    const r = { ok: false, status: res.status, ...this.#errorOf(res) };
    if (res.retryAfter !== undefined) r.retryAfter = res.retryAfter;
    this.#setState('error');
    this.#emit('error', r);
    return r;
  }

  /**
   * Ends this player's session with its own token (the server records reason
   * `ended`). Resolves to true when the server answered 204; the player is
   * stopped either way. With `keepalive` the request outlives the page (used
   * on `pagehide`).
   * @param {{keepalive?: boolean}} [opts]
   * @returns {Promise<boolean>}
   */
  async stop(opts = {}) {
    if (this.state === 'starting') {
      this.#gen++; // start() sees it and deletes the session it may get
      this.#finish({ reason: 'ended', by: null, status: 0, local: true });
      return false;
    }
    if (this.state !== 'playing' && this.state !== 'retrying') return false;
    this.#gen++;
    this.#cancelTimer();
    const token = this.token;
    const sid = this.sessionId;
    this.#setState('stopping');
    const res = await this.#call('DELETE', `${this.#userPath()}/sessions/${encodeURIComponent(sid)}`, token, {
      keepalive: !!opts.keepalive,
    });
    this.#finish({ reason: 'ended', by: null, status: res.status, local: true });
    return res.status === 204;
  }

  /**
   * Stops another session of the same user with the grant ("kick": docs/spec.md §4
   * stop). That session's next heartbeat gets 410 `kicked`, with `by` naming
   * this player's grant (label, device). Typical use, from the 409 screen:
   * `await player.kick(id); await player.start();` (or `start({replace: id})`
   * in one atomic step).
   * @param {string} sessionId
   * @returns {Promise<{ok: boolean, status: number, error?: string, message?: string}>}
   */
  async kick(sessionId) {
    let grant;
    try {
      grant = await this.#grant();
    } catch (e) {
      return { ok: false, status: 0, error: 'no_grant', message: String(e?.message ?? e) };
    }
    const res = await this.#call('DELETE', `${this.#userPath()}/sessions/${encodeURIComponent(sessionId)}`, grant);
    if (res.status === 204) return { ok: true, status: 204 };
    return { ok: false, status: res.status, ...this.#errorOf(res) };
  }

  /**
   * Signs the user out everywhere with the grant ("sign out of all devices",
   * e.g. after a password change: docs/spec.md §4 `DELETE /v1/users/{user}/sessions`).
   * Every session of the user that started before it stops, this player's
   * own included: each gets 410 `kicked` at its next heartbeat, with `by`
   * naming this player's grant. Idempotent: `stopped` counts the live
   * sessions it stopped (0 on a repeat).
   * @returns {Promise<{ok: boolean, status: number, stopped?: number, error?: string, message?: string}>}
   */
  async signOutEverywhere() {
    let grant;
    try {
      grant = await this.#grant();
    } catch (e) {
      return { ok: false, status: 0, error: 'no_grant', message: String(e?.message ?? e) };
    }
    const res = await this.#call('DELETE', `${this.#userPath()}/sessions`, grant);
    if (res.status === 200 && res.body) return { ok: true, status: 200, stopped: res.body.stopped };
    return { ok: false, status: res.status, ...this.#errorOf(res) };
  }

  /**
   * Lists the user's live sessions with the grant, oldest first.
   * @returns {Promise<{ok: boolean, status: number, limit?: number, active?: number,
   *   sessions?: SessionView[], error?: string, message?: string}>}
   */
  async list() {
    let grant;
    try {
      grant = await this.#grant();
    } catch (e) {
      return { ok: false, status: 0, error: 'no_grant', message: String(e?.message ?? e) };
    }
    const res = await this.#call('GET', `${this.#userPath()}/sessions`, grant);
    if (res.status === 200 && res.body) {
      return { ok: true, status: 200, limit: res.body.limit, active: res.body.active, sessions: res.body.sessions ?? [] };
    }
    return { ok: false, status: res.status, ...this.#errorOf(res) };
  }

  /**
   * The licence gate's URL for this session and a DRM system (docs/spec.md,
   * the licence route): `POST {baseUrl}/v1/users/{user}/sessions/{session}/licence/{system}`
   * with `Authorization: Bearer <token>` (the newest {@link StreamcapPlayer#token}).
   * @param {'widevine'|'playready'|'fairplay'|'clearkey'} system
   * @param {string|null} [sessionId] another session's id (default: this player's)
   * @returns {string|null} null while there is no session
   */
  licenceUrl(system, sessionId = this.sessionId) {
    if (!sessionId) return null;
    return `${this.#userPath()}/sessions/${encodeURIComponent(sessionId)}/licence/${encodeURIComponent(system)}`;
  }

  /**
   * Takes the answer to a licence request that went through the gate (a DRM
   * player's licence request, sent to {@link StreamcapPlayer#licenceUrl}).
   * The gate judges a licence request exactly as a heartbeat, so:
   * - an answer carrying `Streamcap-Token` (with `Streamcap-Expires-At` and
   *   `Streamcap-Poll-After`) renews the lease: the module keeps the token and
   *   counts it as this poll's heartbeat (the next heartbeat is due a poll
   *   later). The gate sends them with every forwarded answer and with its
   *   own 502/504 (the upstream failed, the lease was renewed all the same);
   * - 410, 401 and 403 end the session as they do for a heartbeat (`stopped`
   *   with the server's `reason` and `by`);
   * - anything else (a 404 for a system the tenant has no upstream for, a 5xx
   *   without the headers) leaves the session and its heartbeats as they are.
   * In a browser the headers are readable because the gate lists them in
   * `Access-Control-Expose-Headers`.
   * @param {object} answer
   * @param {number} answer.status the HTTP status
   * @param {Headers | Record<string, string> | ((name: string) => string|null|undefined)} [answer.headers]
   *   response headers: a `Headers`, an object (any case of names) or a getter
   * @param {string|object|null} [answer.body] the body (text or parsed JSON), used for 410's `reason` and `by`
   * @returns {'renewed'|'stopped'|'ignored'} what it did; `ignored` also when no session is playing
   */
  licenceAnswer({ status, headers, body } = {}) {
    if (this.state !== 'playing' && this.state !== 'retrying') return 'ignored';
    const get = headerGetter(headers);
    const token = get('streamcap-token');
    if (token) {
      const expiresAt = Number(get('streamcap-expires-at'));
      const pollAfter = Number(get('streamcap-poll-after'));
      if (Number.isFinite(expiresAt) && expiresAt > 0) {
        this.#renewed(this.#gen, { token: token.trim(), expires_at: expiresAt, poll_after: pollAfter }, 'licence');
        return 'renewed';
      }
    }
    if (DEFINITIVE.has(status)) {
      let b = body;
      if (typeof b === 'string') {
        try {
          b = JSON.parse(b);
        } catch {
          b = null;
        }
      }
      this.#stoppedBy(status, b && typeof b === 'object' ? b : {});
      return 'stopped';
    }
    return 'ignored';
  }

  /** Stops listening for `pagehide` and abandons any session loop without telling the server. */
  dispose() {
    this.#gen++;
    this.#cancelTimer();
    if (this.#unloadTarget && this.#onPagehide) {
      this.#unloadTarget.removeEventListener('pagehide', this.#onPagehide);
    }
    this.#unloadTarget = null;
    this.#listeners.clear();
  }

  // ---- the heartbeat loop ----------------------------------------------------

  #scheduleBeat(gen, delayMs, kind) {
    this.#cancelTimer();
    const delay = Math.max(0, Math.round(delayMs));
    this.nextBeatAt = this.#now() + delay;
    this.#timer = this.#setTimeout(() => {
      this.#timer = null;
      this.#beat(gen);
    }, delay);
    this.#emit('schedule', { at: this.nextBeatAt, inMs: delay, kind });
  }

  async #beat(gen) {
    if (gen !== this.#gen) return;
    this.nextBeatAt = null;
    const path = `${this.#userPath()}/sessions/${encodeURIComponent(this.sessionId)}/heartbeat`;
    const timeout = Math.max(1000, Math.min(this.#o.requestTimeoutMs, this.#deadline - this.#now()));
    const res = await this.#call('POST', path, this.token, { timeoutMs: timeout });
    if (gen !== this.#gen) return; // stopped meanwhile: ignore the answer
    const b = res.body ?? {};

    if (res.status === 200 && b.token) {
      this.#renewed(gen, b, 'heartbeat');
      return;
    }
    if (DEFINITIVE.has(res.status)) {
      this.#stoppedBy(res.status, b);
      return;
    }
    this.#retry(gen, res);
  }

  // A renewed lease, from a heartbeat or a licence answer: keep its token and
  // count it as this poll's heartbeat (the next one is due a poll from now).
  #renewed(gen, b, via) {
    const recovered = this.state === 'retrying';
    this.#attempt = 0;
    this.#renew(b);
    if (recovered) this.#setState('playing');
    this.#emit('heartbeat', { sessionId: this.sessionId, pollAfter: this.pollAfter, expiresAt: this.expiresAt, recovered, via });
    this.#scheduleBeat(gen, this.#jittered(this.pollAfter * 1000), 'heartbeat');
  }

  // 410 / 401 / 403: the session is over for good.
  #stoppedBy(status, b) {
    const reason = DEFINITIVE.get(status) ?? b.reason ?? b.error ?? 'stopped';
    this.#gen++;
    this.#finish({
      reason, by: b.by ?? null, status, local: false,
      error: b.error, message: b.message,
    });
  }

  // A network error, a timeout, a 5xx or anything not definitive: keep
  // playing, retry with the token we have until the lease runs out.
  #retry(gen, res) {
    this.#attempt += 1;
    const now = this.#now();
    const err = this.#errorOf(res);
    if (now >= this.#deadline) {
      this.#giveUp(res.status, err);
      return;
    }
    const capMs = Math.min(this.#o.retryMaxMs, this.pollAfter * 1000);
    let delay = this.#jittered(Math.min(capMs, this.#o.retryBaseMs * 2 ** (this.#attempt - 1)));
    if (res.retryAfter !== undefined) delay = Math.max(delay, res.retryAfter * 1000);
    const margin = 250;
    if (now + delay > this.#deadline - margin) {
      // One last try just before the lease ends, else give up at its end.
      delay = this.#deadline - margin - now;
      if (delay < 100) {
        if (this.state !== 'retrying') this.#setState('retrying');
        this.#emit('retry', { attempt: this.#attempt, status: res.status, ...err, delayMs: null, expiresAt: this.expiresAt });
        this.#cancelTimer();
        this.nextBeatAt = null;
        this.#timer = this.#setTimeout(() => {
          this.#timer = null;
          if (gen === this.#gen) this.#giveUp(res.status, err);
        }, Math.max(0, this.#deadline - now));
        return;
      }
    }
    if (this.state !== 'retrying') this.#setState('retrying');
    this.#emit('retry', { attempt: this.#attempt, status: res.status, ...err, delayMs: Math.round(delay), expiresAt: this.expiresAt });
    this.#scheduleBeat(gen, delay, 'retry');
  }

  #giveUp(status, err) {
    this.#gen++;
    this.#finish({
      reason: 'expired', by: null, status, local: true, error: err.error,
      message: `no heartbeat answer before the lease expired (last: ${err.message || err.error})`,
    });
  }

  #renew(b) {
    this.token = b.token;
    this.pollAfter = Math.max(1, Number(b.poll_after) || 30);
    this.expiresAt = Number(b.expires_at);
    // The lease ends at expires_at (server clock). A local clock running ahead
    // would make that look too near (even past): never count on less than one
    // more poll, nor, when the clocks plainly disagree, less than docs/spec.md's
    // default ttl of 3 polls. Retrying a little too long is harmless: the
    // server answers 401 to an expired token.
    const now = this.#now();
    const pollMs = this.pollAfter * 1000;
    let remaining = this.expiresAt * 1000 - now;
    if (!(remaining >= pollMs)) remaining = 3 * pollMs;
    this.#deadline = now + remaining;
  }

  #finish(info) {
    this.#cancelTimer();
    this.nextBeatAt = null;
    this.stopInfo = info;
    this.token = null;
    this.#setState('stopped');
    this.#emit('stopped', info);
  }

  // ---- plumbing --------------------------------------------------------------

  #jittered(ms) {
    const j = Math.max(0, Math.min(0.5, this.#o.jitter));
    return ms * (1 + j * (2 * this.#random() - 1));
  }

  #cancelTimer() {
    if (this.#timer !== null) {
      this.#clearTimeout(this.#timer);
      this.#timer = null;
    }
  }

  #userPath() {
    return `${this.#o.baseUrl}/v1/users/${encodeURIComponent(this.#o.user)}`;
  }

  async #grant() {
    const g = this.#o.grant;
    const v = typeof g === 'function' ? await g() : g;
    if (!v) throw new Error('no grant');
    return String(v).trim();
  }

  #errorOf(res) {
    if (res.status === 0) return { error: 'network', message: String(res.error?.message ?? res.error ?? 'network error') };
    const b = res.body ?? {};
    return { error: b.error ?? `http_${res.status}`, message: b.message ?? '' };
  }

  // One request. Never throws: {status: 0, error} for a network error or timeout.
  async #call(method, url, credential, { keepalive = false, timeoutMs } = {}) {
    const init = { method, headers: { Authorization: `Bearer ${credential}` }, credentials: 'omit' };
    let ctrl = null;
    let t = null;
    if (keepalive) {
      init.keepalive = true; // outlives the page; no abort: the page is going away
    } else {
      ctrl = new AbortController();
      init.signal = ctrl.signal;
      t = this.#setTimeout(() => ctrl.abort(), timeoutMs ?? this.#o.requestTimeoutMs);
    }
    try {
      const res = await this.#fetch(url, init);
      const text = await res.text();
      let body = null;
      if (text) {
        try {
          body = JSON.parse(text);
        } catch {
          body = null;
        }
      }
      const out = { status: res.status, body };
      const ra = res.headers?.get?.('retry-after');
      if (ra && /^\d+$/.test(ra.trim())) out.retryAfter = Number(ra.trim());
      return out;
    } catch (error) {
      return { status: 0, body: null, error };
    } finally {
      if (t !== null) this.#clearTimeout(t);
    }
  }

  #setState(state) {
    const previous = this.state;
    if (previous === state) return;
    this.state = state;
    this.#emit('state', { state, previous });
  }

  #emit(type, detail) {
    const cb = this.#o[`on${type[0].toUpperCase()}${type.slice(1)}`];
    const fns = [...(typeof cb === 'function' ? [cb] : []), ...(this.#listeners.get(type) ?? [])];
    for (const fn of fns) {
      try {
        fn(detail);
      } catch (e) {
        // A broken handler must not break the heartbeat loop.
        console.error(`streamcap-player: ${type} handler threw`, e);
      }
    }
  }
}

function headerGetter(headers) {
  if (!headers) return () => null;
  if (typeof headers === 'function') return (n) => headers(n) ?? null;
  if (typeof headers.get === 'function') return (n) => headers.get(n);
  const lower = new Map(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
  return (n) => lower.get(n.toLowerCase()) ?? null;
}

/** EME key systems and the gate's names for them. */
export const KEY_SYSTEMS = Object.freeze({
  'org.w3.clearkey': 'clearkey',
  'com.widevine.alpha': 'widevine',
  'com.microsoft.playready': 'playready',
  'com.microsoft.playready.recommendation': 'playready',
  'com.apple.fps': 'fairplay',
  'com.apple.fps.1_0': 'fairplay',
});

/**
 * Puts a Shaka Player's licence requests through the streamcap licence gate.
 *
 *   const shakaPlayer = new shaka.Player();
 *   await shakaPlayer.attach(video);
 *   const detach = attachShaka(streamcap, shakaPlayer);
 *   if ((await streamcap.start()).ok) await shakaPlayer.load(manifestUri);
 *
 * - Configures `drm.servers` for the given key systems to the gate (their
 *   licence requests go to {@link StreamcapPlayer#licenceUrl} of the current
 *   session, with `Authorization: Bearer <newest lease token>`); the vendor's
 *   own licence URL and credentials live in the gate's configuration.
 * - Takes the renewed lease from every licence answer
 *   ({@link StreamcapPlayer#licenceAnswer}): licence requests count as
 *   heartbeats, so with licence requests at least once a poll (key rotation,
 *   licence renewals) the module sends no separate heartbeat.
 * - On 410, 401 or 403 from the gate: no retry, the session stops and
 *   `onStopped` runs (default: `shakaPlayer.unload()`, which stops playback and
 *   drops the keys). Also when the session stops otherwise (a heartbeat's 410,
 *   the lease ran out).
 * - Without a session (never started, refused, stopped) a licence request is
 *   not sent at all: Shaka reports REQUEST_FILTER_ERROR.
 * - When the media element ends, the session is stopped (`stopOnEnded`).
 *
 * Start the session before `load()`: the first licence request needs the lease.
 * Call it after `attach()` (it uses the player's networking engine).
 *
 * @param {StreamcapPlayer} streamcap
 * @param {object} shakaPlayer a `shaka.Player` (Shaka Player 4 or 5)
 * @param {object} [options]
 * @param {string[]} [options.keySystems] key systems to send through the gate
 *   (default: every one in {@link KEY_SYSTEMS})
 * @param {(info: StopInfo) => void} [options.onStopped] how to stop playback when the
 *   session ends for any reason but this player's own stop(); default `shakaPlayer.unload()`
 * @param {boolean} [options.stopOnEnded=true] stop the session when the media element fires `ended`
 * @param {object} [options.shaka] the `shaka` namespace (default `globalThis.shaka`), for the request type constant
 * @returns {() => void} detach: removes the filters and listeners
 */
export function attachShaka(streamcap, shakaPlayer, options = {}) {
  const net = shakaPlayer?.getNetworkingEngine?.();
  if (!net) throw new TypeError('attachShaka needs a shaka.Player with a networking engine (call it after attach())');
  const ns = options.shaka ?? globalThis.shaka;
  const LICENSE = ns?.net?.NetworkingEngine?.RequestType?.LICENSE ?? 2;
  const BAD_HTTP_STATUS = ns?.util?.Error?.Code?.BAD_HTTP_STATUS ?? 1001;
  const keySystems = options.keySystems ?? Object.keys(KEY_SYSTEMS);
  const onStopped = options.onStopped ?? (() => shakaPlayer.unload());
  const stopOnEnded = options.stopOnEnded ?? true;

  const systemOf = (request) => KEY_SYSTEMS[request?.drmInfo?.keySystem] ?? KEY_SYSTEMS[keySystems[0]] ?? 'clearkey';
  const gatePrefix = (url) => {
    const sys = url.split('/').pop();
    const probe = streamcap.licenceUrl(sys);
    return probe !== null && url === probe;
  };

  // Shaka picks a key system only if it has a server: point them at the gate.
  // The request filter puts in the current session's URL and token (Shaka
  // picks the network plugin from this URL's scheme before filters run, so
  // it is the gate's URL with a placeholder session).
  const servers = {};
  for (const ks of keySystems) {
    const system = KEY_SYSTEMS[ks];
    if (system) servers[ks] = streamcap.licenceUrl(system, streamcap.sessionId ?? '-');
  }
  shakaPlayer.configure({ drm: { servers } });

  const requestFilter = (type, request) => {
    if (type !== LICENSE) return;
    const url = streamcap.licenceUrl(systemOf(request));
    if (!url || !streamcap.token || (streamcap.state !== 'playing' && streamcap.state !== 'retrying')) {
      throw new Error(`streamcap: no session to request a licence with (state ${streamcap.state})`);
    }
    request.uris = [url];
    request.headers = { ...request.headers, Authorization: `Bearer ${streamcap.token}` };
  };
  const responseFilter = (type, response) => {
    if (type !== LICENSE || !gatePrefix(response.originalUri ?? response.uri)) return;
    streamcap.licenceAnswer({ status: response.status ?? 200, headers: response.headers });
  };
  // A failed request: Shaka's networking engine fires a cancelable `retry`
  // with the error, whose data are [uri, status, text, headers, type].
  const onRetry = (event) => {
    const e = event.error;
    if (!e || e.code !== BAD_HTTP_STATUS || e.data?.[4] !== LICENSE || !gatePrefix(String(e.data[0]))) return;
    const status = Number(e.data[1]);
    streamcap.licenceAnswer({ status, headers: e.data[3] ?? {}, body: e.data[2] ?? null });
    if (DEFINITIVE.has(status)) event.preventDefault(); // retrying cannot help
  };
  const offStopped = streamcap.on('stopped', (info) => {
    if (info.local && info.reason === 'ended') return; // this player's own stop(): the app decides
    try {
      const r = onStopped(info);
      if (r && typeof r.catch === 'function') r.catch(() => {});
    } catch (err) {
      console.error('streamcap-player: onStopped threw', err);
    }
  });
  const media = shakaPlayer.getMediaElement?.() ?? null;
  const onEnded = () => {
    if (streamcap.state === 'playing' || streamcap.state === 'retrying') streamcap.stop();
  };

  net.registerRequestFilter(requestFilter);
  net.registerResponseFilter(responseFilter);
  net.addEventListener('retry', onRetry);
  if (media && stopOnEnded) media.addEventListener('ended', onEnded);

  return () => {
    net.unregisterRequestFilter(requestFilter);
    net.unregisterResponseFilter(responseFilter);
    net.removeEventListener('retry', onRetry);
    offStopped();
    if (media && stopOnEnded) media.removeEventListener('ended', onEnded);
  };
}

export default StreamcapPlayer;
