"""Simulated streamcap players, shared by the chaos test (loadtest/chaos/)
and the cluster test (deploy/cluster/).

Python 3 standard library only: asyncio with raw sockets and a small pool of
keep-alive HTTP/1.1 connections that many players share (as players behind
one CDN edge would). A player behaves as the README's "How a player must
behave" asks (docs/spec.md §4, §6):

  201 / 200      keep playing, use the new token next time, next heartbeat in
                 poll_after seconds (+-10 % jitter)
  409            refused at start (never a stop)
  410/401/403    stop for good, with the answer's reason
  other 4xx      stop for good ("unexpected")
  net / 5xx      retry with the same token (RETRY s, doubling up to the
                 population's `backoff_max`) until expires_at; then the
                 session is lost

A `Population` holds the pool and the behaviour; each test subclasses it and
counts what it needs through the `on_*` hooks, which see every request.

Stops a test causes itself (a kick, a SIGKILL that loses a stop, an extra
that healing must stop) are timed: `expect_stop(p)` notes when the stop was
made, and `p.played_after_stop()` says how long the player went on playing
after it (until it heard its 410, or until now while it still plays).
`stop_other(p, how)` makes such a stop as a user does from another device
(a kick with a grant, or a start with `?replace=`), and `stop_summary`
reports whether each stopped player heard it with the reason it was stopped
for, and how long it played on.
"""

import asyncio
import json
import random
import time

RETRY = 0.25


class NetError(Exception):
    """A request that got no HTTP answer (refused, reset, timed out, garbled)."""


class Pool:
    """Keep-alive HTTP/1.1 connections to one host:port, shared by many players."""

    def __init__(self, host, port, size, timeout=2.0, connect_timeout=2.0):
        self.host, self.port = host, int(port)
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self.idle = asyncio.Queue()
        for _ in range(size):
            self.idle.put_nowait(None)  # a slot; connected on first use

    @classmethod
    def of(cls, hostport, size, **kw):
        host, port = hostport.rsplit(":", 1)
        return cls(host, port, size, **kw)

    async def request(self, method, path, bearer=None):
        """(status, headers with lower-case names, body bytes); NetError when no answer."""
        conn = await self.idle.get()
        try:
            if conn is None:
                conn = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.connect_timeout)
            reader, writer = conn
            head = f"{method} {path} HTTP/1.1\r\nHost: streamcap\r\n"
            if bearer:
                head += f"Authorization: Bearer {bearer}\r\n"
            if method == "POST":
                head += "Content-Length: 0\r\n"
            writer.write((head + "\r\n").encode())
            raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.timeout)
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            n = int(headers.get("content-length", "0"))
            body = await asyncio.wait_for(reader.readexactly(n), self.timeout) if n else b""
            if headers.get("connection", "").lower() == "close":
                writer.close()
                conn = None
            return status, headers, body
        except (OSError, EOFError, ValueError, IndexError, asyncio.TimeoutError,
                asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            if conn is not None:
                conn[1].close()
            conn = None
            raise NetError(type(e).__name__) from None
        finally:
            self.idle.put_nowait(conn)


def json_of(body):
    """The JSON body as a dict; {} when there is none or it is not JSON."""
    try:
        d = json.loads(body) if body else {}
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}


async def scrape(hostport, timeout=2.0):
    """A node's /metrics as {sample name with labels: value}."""
    _, _, body = await Pool.of(hostport, 1, timeout=timeout).request("GET", "/metrics")
    out = {}
    for line in body.decode("utf-8", "replace").splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


class Player:
    """One player: its grant, its current session and token, and how it ended.

    state: new, playing, refused (409), start_failed, stopped (410/401/403/4xx),
    lost (expired while retrying), ended (it stopped its own session)."""

    def __init__(self, user, grant, kind, limit):
        self.user, self.grant, self.kind, self.limit = user, grant, kind, limit
        self.state = "new"
        self.sid = self.token = None
        self.poll = 2.0
        self.expires_at = 0.0  # unix seconds, from the server
        self.reason = None  # why it is not playing, for the report
        self.detail = None  # the server's message with a stop
        self.started_at = None  # time.monotonic() of its latest 201
        self.episodes = 0  # sessions it started
        self.stop_made_at = None  # time.monotonic() when a stop of its session was made (expect_stop)
        self.expect = None  # the 410 reason a stop made on purpose must give it ("kicked", "replaced")
        self.heard_stop_at = None  # time.monotonic() when it learnt that its session was stopped
        self.replaced_by = None

    def successor(self, grant=None, kind=None):
        """The player that takes this one's place (same user and limit), e.g.
        after a kick: it starts a session of its own."""
        p = Player(self.user, grant or self.grant, kind or self.kind, self.limit)
        self.replaced_by = p
        return p

    def played_after_stop(self, now=None):
        """Seconds it went on playing after the stop noted by expect_stop();
        None when no stop was noted."""
        if self.stop_made_at is None:
            return None
        end = self.heard_stop_at if self.heard_stop_at is not None else (now or time.monotonic())
        return max(0.0, end - self.stop_made_at)


class Population:
    """Players sharing one connection pool, and what they do on each answer.

    Subclasses count through the hooks; `turn` is one step of a playing
    player (by default a heartbeat) and may be overridden (e.g. to churn)."""

    def __init__(self, pool, rng=None, backoff_max=RETRY):
        self.pool = pool
        self.rng = rng or random.Random()
        self.backoff_max = backoff_max
        self.running = True

    # ------------------------------------------------------------ hooks
    def on_answer(self, p, op, status, headers, seconds):
        """Every HTTP answer (op: start, heartbeat, stop, kick, list)."""

    def on_net_error(self, p, op, kind):
        """Every request that got no answer."""

    def on_retry(self, p, op):
        """A request about to be sent again after a net error or a 5xx."""

    def on_stopped(self, p):
        """p stopped for good (state stopped or lost; p.reason says why)."""

    # ---------------------------------------------------------- requests
    async def call(self, p, op, method, path, bearer):
        """(status, headers, body), or None on a net error."""
        t = time.monotonic()
        try:
            status, headers, body = await self.pool.request(method, path, bearer)
        except NetError as e:
            self.on_net_error(p, op, str(e))
            return None
        self.on_answer(p, op, status, headers, time.monotonic() - t)
        return status, headers, body

    async def start(self, p, attempts=1, replace=None):
        """Starts a session; a net error or 5xx is retried up to `attempts`
        times in all (None: until answered). Returns the status, or None."""
        path = f"/v1/users/{p.user}/sessions" + (f"?replace={replace}" if replace else "")
        tries = 0
        while True:
            tries += 1
            got = await self.call(p, "start", "POST", path, p.grant)
            if got is not None and got[0] < 500:
                break
            if attempts is not None and tries >= attempts:
                p.state, p.reason = "start_failed", "start: no answer" if got is None else f"start {got[0]}"
                return None if got is None else got[0]
            self.on_retry(p, "start")
            await asyncio.sleep(RETRY)
        status, _, body = got
        d = json_of(body)
        if status == 201:
            p.sid, p.token = d["session_id"], d["token"]
            p.poll, p.expires_at = float(d["poll_after"]), float(d["expires_at"])
            p.state, p.reason = "playing", None
            p.started_at = time.monotonic()
            p.episodes += 1
        elif status == 409:
            p.state, p.reason = "refused", f"409 {d.get('error')}"
        else:
            p.state, p.reason = "start_failed", f"start {status} {d.get('error')}"
        return status

    async def heartbeat(self, p):
        """One renewal, retried with the same token until expires_at.
        True while the player plays on."""
        path = f"/v1/users/{p.user}/sessions/{p.sid}/heartbeat"
        backoff = RETRY
        while True:
            got = await self.call(p, "heartbeat", "POST", path, p.token)
            status = got[0] if got else None
            if status == 200:
                d = json_of(got[2])
                p.token, p.poll, p.expires_at = d["token"], float(d["poll_after"]), float(d["expires_at"])
                return True
            if p.state != "playing":
                return False  # it ended its own session meanwhile: this answer is about that
            if status is not None and status < 500:
                d = json_of(got[2])
                p.detail = d.get("message")
                self.stop(p, "stopped", f"{status} {d.get('reason') or d.get('error') or 'unexpected'}")
                return False
            if time.time() >= p.expires_at:
                self.stop(p, "lost", "expired while retrying")
                return False
            if not self.running:
                return True
            self.on_retry(p, "heartbeat")
            await asyncio.sleep(min(backoff, max(0.0, p.expires_at - time.time())))
            backoff = min(backoff * 2, self.backoff_max)

    def stop(self, p, state, reason):
        p.state, p.reason = state, reason
        p.heard_stop_at = time.monotonic()
        self.on_stopped(p)

    async def turn(self, p):
        """One step of a playing player; False once it has stopped."""
        return await self.heartbeat(p)

    async def keep_playing(self, p):
        """Heartbeats every poll_after (+-10 %) while the population runs."""
        while self.running and p.state == "playing":
            await asyncio.sleep(p.poll * self.rng.uniform(0.9, 1.1))
            if not self.running or p.state != "playing":
                return
            if not await self.turn(p):
                return

    async def end(self, p, retry=False):
        """The player stops its own session (DELETE with its token); with
        `retry`, net errors and 5xx are retried until expires_at."""
        if p.state != "playing":
            return None
        p.state = "ended"
        path = f"/v1/users/{p.user}/sessions/{p.sid}"
        while True:
            got = await self.call(p, "stop", "DELETE", path, p.token)
            if got is not None and got[0] < 500:
                return got[0]
            if not retry or time.time() >= p.expires_at:
                return None
            self.on_retry(p, "stop")
            await asyncio.sleep(RETRY)

    async def kick(self, p, grant=None):
        """Stops p's session from elsewhere (DELETE with a grant of the user:
        reason kicked) and notes the moment; p hears it at its next heartbeat.
        Returns the status, or None on a net error."""
        self.expect_stop(p)
        got = await self.call(p, "kick", "DELETE", f"/v1/users/{p.user}/sessions/{p.sid}", grant or p.grant)
        return got[0] if got else None

    async def stop_other(self, p, how):
        """Stops playing player p from another device of its user, as a user
        does: how="kick" (DELETE with a grant of the user), then a new
        session starts in its place; how="replace" (a new session starts
        with ?replace= of p's session). Notes the stop (expect_stop) and the
        410 reason p must hear (p.expect). Returns the new player (state
        playing if its start was admitted), or None when the kick got no 204."""
        new = p.successor()
        if how == "kick":
            p.expect = "kicked"
            if await self.kick(p) != 204:
                p.expect = None
                return None
            await self.start(new, attempts=3)
        else:
            p.expect = "replaced"
            self.expect_stop(p)
            await self.start(new, attempts=3, replace=p.sid)
            if new.state != "playing":
                p.expect = None
        return new

    def expect_stop(self, p, at=None):
        """Notes that p's session was stopped (or must be) at `at`, so that
        p.played_after_stop() measures how long p went on playing."""
        p.stop_made_at = time.monotonic() if at is None else at

    async def listed(self, user, grant, pool=None):
        """Session ids the server lists for `user` (GET with a grant); None on
        a net error or a non-200 answer."""
        try:
            status, _, body = await (pool or self.pool).request("GET", f"/v1/users/{user}/sessions", grant)
        except NetError:
            return None
        if status != 200:
            return None
        return [s["session_id"] for s in json_of(body).get("sessions", [])]


def stop_summary(stopped, now=None):
    """Of players stopped on purpose (stop_other): how many heard their 410
    with the reason they were stopped for, how many heard another answer,
    how many still play ("lost" stops), and how long each played on after
    its stop (seconds: max, median, and the values)."""
    now = now or time.monotonic()
    heard = [p for p in stopped if p.state != "playing" and p.reason == f"410 {p.expect}"]
    other = [p for p in stopped if p.state != "playing" and p.reason != f"410 {p.expect}"]
    playing = [p for p in stopped if p.state == "playing"]
    played = sorted(round(p.played_after_stop(now), 2) for p in stopped)
    return {
        "stops": len(stopped),
        "heard_original_reason": len(heard),
        "heard_other": sorted({str(p.reason) for p in other}),
        "heard_other_count": len(other),
        "still_playing": len(playing),
        "played_after_stop_max_s": played[-1] if played else None,
        "played_after_stop_median_s": played[len(played) // 2] if played else None,
        "played_after_stop_s": played,
    }
