// One simulated device for the browser test of the licence gate: the player
// module and Shaka Player, driven from the test through `window.device`.
//
// `modified: true` stands for a player whose stop handling was patched out:
// attachShaka gets the player module through a pass-through Proxy, and once
// `device.ignoreStops()` is called it hides every stop from the integration
// (no unload) and keeps sending licence requests with the last lease it had.
// For a device that was never admitted, `device.forceLicence({sessionId,
// token})` makes it ask the gate anyway with whatever it presents.

import { StreamcapPlayer, attachShaka } from '/streamcap-player.js';

const video = document.getElementById('video');
const LICENSE = shaka.net.NetworkingEngine.RequestType.LICENSE;

const device = {
  log: [], // licence answers and player events, in order
  errors: [],
  waitingForKey: [], // currentTime at each waitingforkey
  heartbeats: { heartbeat: 0, licence: 0 },
  streamcap: null,
  shaka: null,
  patched: false,
  forced: null,

  async setup({ api, user, grant, bufferingGoal = 4 }) {
    shaka.polyfill.installAll();
    const streamcap = new StreamcapPlayer({ baseUrl: api, user, grant });
    this.streamcap = streamcap;
    streamcap.on('heartbeat', (h) => {
      this.heartbeats[h.via] += 1;
    });
    streamcap.on('stopped', (s) => this.note('stopped', { reason: s.reason, status: s.status }));

    const player = new shaka.Player();
    await player.attach(video);
    this.shaka = player;
    player.configure({
      streaming: { bufferingGoal, rebufferingGoal: 1, bufferBehind: 10 },
      drm: { retryParameters: { maxAttempts: 2, baseDelay: 500, backoffFactor: 2, fuzzFactor: 0, timeout: 10000 } },
    });
    player.addEventListener('error', (e) => this.errors.push({ code: e.detail.code, data: String(e.detail.data?.[0]?.code ?? '') }));
    video.addEventListener('waitingforkey', () => this.waitingForKey.push(video.currentTime));

    // What attachShaka sees: the module itself until ignoreStops(); then the
    // same module with its stops hidden and its last lease kept.
    let lastToken = null;
    let lastSession = null;
    streamcap.on('heartbeat', () => {
      lastToken = streamcap.token;
      lastSession = streamcap.sessionId;
    });
    streamcap.on('started', () => {
      lastToken = streamcap.token;
      lastSession = streamcap.sessionId;
    });
    const self = this;
    const seen = new Proxy(streamcap, {
      get(target, prop) {
        if (self.forced) {
          if (prop === 'token') return self.forced.token;
          if (prop === 'state') return 'playing';
          if (prop === 'licenceUrl') return (system) => target.licenceUrl(system, self.forced.sessionId);
        }
        if (self.patched) {
          if (prop === 'token') return target.token ?? lastToken;
          if (prop === 'state') return 'playing';
          if (prop === 'licenceUrl') return (system) => target.licenceUrl(system, target.sessionId ?? lastSession);
        }
        const v = Reflect.get(target, prop, target);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    attachShaka(seen, player, {
      keySystems: ['org.w3.clearkey'],
      onStopped: (info) => {
        if (self.patched) {
          this.note('stop ignored', { reason: info.reason });
          return undefined;
        }
        this.note('unload', { reason: info.reason });
        return player.unload();
      },
    });

    // Record every licence answer as the page saw it (after attachShaka's handlers).
    const net = player.getNetworkingEngine();
    net.registerResponseFilter((type, response) => {
      if (type !== LICENSE) return;
      this.note('licence', { status: response.status ?? 200, renewed: !!response.headers['streamcap-token'], uri: response.uri });
    });
    net.addEventListener('retry', (event) => {
      const e = event.error;
      if (!e || e.data?.[4] !== LICENSE) return;
      let body = null;
      try {
        body = JSON.parse(e.data[2]);
      } catch {
        body = e.data[2] ?? null;
      }
      this.note('licence', { status: e.data[1] ?? 0, error: body?.error ?? null, reason: body?.reason ?? null, code: e.code, uri: e.data[0] });
    });
  },

  note(kind, detail) {
    this.log.push({ kind, at: Date.now(), currentTime: video.currentTime, ...detail });
  },

  async start() {
    const r = await this.streamcap.start();
    return { ok: r.ok, status: r.status, sessionId: r.sessionId ?? null, error: r.error ?? null, sessions: r.sessions ?? null };
  },

  async load(manifest = '/content/manifest.mpd') {
    try {
      await this.shaka.load(manifest);
      // Not awaited: without a key it would never resolve.
      video.play().catch((e) => this.note('play rejected', { message: String(e.message ?? e) }));
      return { ok: true };
    } catch (e) {
      return { ok: false, code: e.code ?? null, message: String(e.message ?? e) };
    }
  },

  kick(sessionId) {
    return this.streamcap.kick(sessionId);
  },

  ignoreStops() {
    this.patched = true;
  },

  forceLicence(credentials) {
    this.forced = credentials;
  },

  status() {
    const keys = this.shaka?.getKeyStatuses?.() ?? {};
    return {
      currentTime: video.currentTime,
      paused: video.paused,
      readyState: video.readyState,
      keys,
      usable: Object.values(keys).filter((s) => s === 'usable').length,
      state: this.streamcap?.state ?? null,
      sessionId: this.streamcap?.sessionId ?? null,
      token: this.streamcap?.token ?? null,
      heartbeats: { ...this.heartbeats },
      waitingForKey: [...this.waitingForKey],
      log: [...this.log],
      errors: [...this.errors],
    };
  },
};

window.device = device;
document.body.dataset.ready = '1';
