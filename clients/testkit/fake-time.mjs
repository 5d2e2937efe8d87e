// A virtual clock for the player module's tests: `now`, setTimeout and
// clearTimeout to inject, and `advance(ms)` to fire due timers in order.

/** A virtual clock with setTimeout/clearTimeout. */
export function fakeTime(start = 1_700_000_000_000) {
  let now = start;
  let id = 0;
  const timers = new Map();
  const flush = async () => {
    for (let i = 0; i < 20; i++) await Promise.resolve();
  };
  return {
    now: () => now,
    setTimeout: (fn, ms) => {
      timers.set(++id, { fn, at: now + Math.max(0, ms) });
      return id;
    },
    clearTimeout: (t) => timers.delete(t),
    pending: () => [...timers.values()].map((t) => t.at - now).sort((a, b) => a - b),
    /** Moves the clock forward, firing due timers in order. */
    async advance(ms) {
      const until = now + ms;
      for (;;) {
        await flush();
        const due = [...timers.entries()].filter(([, t]) => t.at <= until).sort((a, b) => a[1].at - b[1].at)[0];
        if (!due) break;
        timers.delete(due[0]);
        now = due[1].at;
        due[1].fn();
      }
      now = until;
      await flush();
    },
  };
}
