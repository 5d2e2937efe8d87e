#!/usr/bin/env python3
"""Chaos players: simulated streamcap players while the server is SIGKILLed
and restarted, several times over, on the same port (see chaos.sh).

Python 3 standard library only. The server runs in dev mode (fixed, public
keys), so lease tokens survive every restart and sessions heal from them.

Who plays:
  incumbents  every account starts players within its limit (half of the
              accounts exactly at it), under all three policies; a few
              players "churn" (stop, then start the next episode). None of
              them may ever be stopped, refused or lost: a wrong stop.
  extras      after each restart, one extra player per "extras" account
              (reject_new, already at its limit) starts at once, while the
              server does not know the incumbents yet: it is admitted. When
              the incumbents heal, the extra (the latest started) must be
              stopped with limit_exceeded and must learn it at its next
              heartbeat; a 409 is fine too (the incumbents healed first).

How players behave (README "How a player must behave"):
  200/201     keep playing with the new token, next heartbeat in poll_after
              seconds (+-10 % jitter)
  410/401/403 stop for good
  net error / 5xx   retry with the same token every RETRY s until
              expires_at; then the session is lost

Each round: wait a random moment, SIGKILL the server, stay down a random
time (below the token ttl), restart on the same port, start the extras, and
measure:
  failed      requests that failed during the outage (each was retried)
  heal        seconds from the restart until, for every sampled account, the
              server lists exactly its incumbents (all healed, extras gone)
  players     seconds from the restart until no account has more players
              that believe they are playing than its limit (every extra has
              heard its 410 or was refused)
Exit status 1 on any wrong stop, any extra that kept playing, or a round
that did not converge.
"""

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time

RETRY = 0.25


class NetError(Exception):
    pass


class Pool:
    """Keep-alive HTTP/1.1 connections shared by all players."""

    def __init__(self, host, port, size, timeout=2.0):
        self.host, self.port, self.timeout = host, port, timeout
        self.idle = asyncio.Queue()
        for _ in range(size):
            self.idle.put_nowait(None)

    async def request(self, method, path, bearer=None):
        conn = await self.idle.get()
        try:
            if conn is None:
                conn = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
            reader, writer = conn
            head = f"{method} {path} HTTP/1.1\r\nHost: streamcap\r\n"
            if bearer:
                head += f"Authorization: Bearer {bearer}\r\n"
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
            return status, (json.loads(body) if body else None)
        except (OSError, EOFError, ValueError, IndexError, asyncio.TimeoutError,
                asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            if conn is not None:
                conn[1].close()
            conn = None
            raise NetError(type(e).__name__) from None
        finally:
            self.idle.put_nowait(conn)


class Player:
    def __init__(self, user, grant, kind, limit, churn):
        self.user, self.grant, self.kind, self.limit, self.churn = user, grant, kind, limit, churn
        self.state = "idle"  # idle, playing, refused, stopped, lost, done
        self.sid = self.token = None
        self.poll = 2.0
        self.expires_at = 0.0
        self.outcome = None  # why it ended, for the report
        self.round = None  # extras: the round that started it


class Chaos:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.proc = None
        self.pool = Pool("127.0.0.1", args.port, args.connections)
        self.players = []
        self.by_user = {}
        self.failed = 0  # requests that failed (network or 5xx), all rounds
        self.wrong = []  # (player user, what)
        self.rounds = []
        self.extra_grants = {}  # user -> grants for its extras, one per round
        self.extra_limit = {}  # user -> limit of an extras account
        self.ending = False
        self.churned = 0
        self.round_failed = 0
        self.log = open(args.server_log, "ab")

    # ---------------------------------------------------------------- server

    def spawn(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMCAP_")}
        cmd = [self.args.bin, "serve", "--listen", f"127.0.0.1:{self.args.port}",
               "--admin-listen", f"127.0.0.1:{self.args.admin_port}",
               "--poll-secs", str(self.args.poll), "--min-poll-secs", "1",
               "--ttl-factor", str(self.args.ttl_factor), "--log-level", "warn"]
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        if self.args.pid_file:
            with open(self.args.pid_file, "w") as f:
                f.write(f"{self.proc.pid}\n")

    async def healthy(self, within=10.0):
        admin = Pool("127.0.0.1", self.args.admin_port, 1, timeout=0.5)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"chaos: the server exited with {self.proc.returncode}; see {self.args.server_log}")
            try:
                status, _ = await admin.request("GET", "/healthz")
                if status == 200:
                    return
            except NetError:
                pass
            await asyncio.sleep(0.01)
        raise SystemExit("chaos: the server did not become healthy")

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    # ---------------------------------------------------------------- players

    def mint(self, prefix, count, users, limit, policy, device):
        cmd = [self.args.bin, "mint", "--user", prefix, "--count", str(count), "--users", str(users),
               "--limit", str(limit), "--policy", policy, "--valid-secs", "7200"]
        if device:
            cmd += ["--device", "dev"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMCAP_")}
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        return [json.loads(line) for line in out.splitlines()]

    def population(self):
        a = self.args
        policies = {"reject_new": "rn", "evict_oldest": "eo", "reject_new_device": "rd"}
        for limit in range(1, a.max_limit + 1):
            for policy, code in policies.items():
                # Accounts exactly at their limit, and (limit > 1) one below it, which churn.
                for full in (True, False) if limit > 1 else (True,):
                    per_user = limit if full else limit - 1
                    users = a.users_per_group
                    prefix = f"c{limit}{code}{'f' if full else 'u'}-{a.seed}"
                    for line in self.mint(prefix, users * per_user, users, limit, policy,
                                          policy == "reject_new_device"):
                        churn = not full and self.rng.random() < 0.3
                        self.add(Player(line["user"], line["grant"], "incumbent", limit, churn))
        # Accounts that get an extra after every restart: at their limit, reject_new.
        for limit in (1, 2, 3):
            lines = self.mint(f"x{limit}-{a.seed}", a.extras_users * (limit + a.rounds), a.extras_users,
                              limit, a.extras_policy, False)
            for line in lines:
                self.extra_grants.setdefault(line["user"], []).append(line["grant"])
                self.extra_limit[line["user"]] = limit
        for user, grants in self.extra_grants.items():
            limit = self.extra_limit[user]
            for g in grants[:limit]:
                self.add(Player(user, g, "incumbent", limit, False))

    def add(self, p):
        self.players.append(p)
        self.by_user.setdefault(p.user, []).append(p)

    async def call(self, method, path, bearer):
        try:
            status, body = await self.pool.request(method, path, bearer)
        except NetError:
            self.failed += 1
            self.round_failed += 1
            return None, None
        if status >= 500:
            self.failed += 1
            self.round_failed += 1
            return None, None
        return status, body

    async def start(self, p, retry):
        """Starts a session; with `retry`, retries network errors (safe here:
        a failed request either never arrived or died with the server)."""
        while True:
            status, body = await self.call("POST", f"/v1/users/{p.user}/sessions", p.grant)
            if status is None and retry:
                await asyncio.sleep(RETRY)
                continue
            if status == 201:
                p.sid, p.token, p.poll = body["session_id"], body["token"], float(body["poll_after"])
                p.expires_at = float(body["expires_at"])
                p.state = "playing"
                return True
            p.state, p.outcome = "refused", f"start {status}: {(body or {}).get('error')}"
            if p.kind == "incumbent":
                self.wrong.append((p.user, p.outcome))
            return False

    async def beat(self, p):
        """One heartbeat with retries; False once the player has stopped."""
        while True:
            path = f"/v1/users/{p.user}/sessions/{p.sid}/heartbeat"
            status, body = await self.call("POST", path, p.token)
            if status == 200:
                p.token, p.poll, p.expires_at = body["token"], float(body["poll_after"]), float(body["expires_at"])
                return True
            if status is None:
                if time.time() >= p.expires_at:
                    self.stopped(p, "lost", "token expired while retrying")
                    return False
                await asyncio.sleep(RETRY)
                continue
            reason = (body or {}).get("reason") or (body or {}).get("error")
            self.stopped(p, "stopped", f"{status} {reason}")
            return False

    def stopped(self, p, state, why):
        p.state, p.outcome = state, why
        if p.kind == "incumbent":
            self.wrong.append((p.user, why))
        elif why != "410 limit_exceeded":
            self.wrong.append((p.user, f"extra: {why}"))

    async def play(self, p, retry_start):
        if not await self.start(p, retry_start):
            return
        while not self.ending:
            await asyncio.sleep(p.poll * self.rng.uniform(0.9, 1.1))
            if self.ending:
                break
            if p.churn and self.rng.random() < 0.15:
                # Next episode: stop this session, start another.
                while True:
                    status, _ = await self.call("DELETE", f"/v1/users/{p.user}/sessions/{p.sid}", p.token)
                    if status is not None:
                        break
                    await asyncio.sleep(RETRY)
                if status != 204:
                    self.stopped(p, "stopped", f"churn stop {status}")
                    return
                self.churned += 1
                if not await self.start(p, True):
                    return
                continue
            if not await self.beat(p):
                return
        if p.state == "playing":
            while True:
                status, _ = await self.call("DELETE", f"/v1/users/{p.user}/sessions/{p.sid}", p.token)
                if status is not None or time.time() >= p.expires_at:
                    break
                await asyncio.sleep(RETRY)
            p.state = "done"

    # ---------------------------------------------------------------- checks

    def expected(self, user):
        return {p.sid for p in self.by_user[user] if p.kind == "incumbent" and p.state == "playing"}

    async def listed(self, user):
        grant = self.by_user[user][0].grant
        status, body = await self.call("GET", f"/v1/users/{user}/sessions", grant)
        if status != 200:
            return None
        return {s["session_id"] for s in body["sessions"]}

    def believers_over(self):
        """Accounts where more players believe they play than the limit allows."""
        over = []
        for user, ps in self.by_user.items():
            playing = [p for p in ps if p.state == "playing"]
            if playing and len(playing) > playing[0].limit:
                over.append(user)
        return over

    async def converge(self, t_up, users, extras, within):
        """Seconds from t_up until every user in `users` lists exactly its
        incumbents, and until every extra has had its start answered and no
        account has more believing players than its limit; None where that
        did not happen within `within`."""
        heal = players = None
        pending = set(users)
        deadline = t_up + within
        while time.monotonic() < deadline and (heal is None or players is None):
            if pending:
                results = await asyncio.gather(*(self.listed(u) for u in pending))
                for u, ids in zip(list(pending), results):
                    if ids is not None and ids == self.expected(u):
                        pending.discard(u)
                if not pending and heal is None:
                    heal = time.monotonic() - t_up
            started = all(p.state != "idle" for p in extras)
            if players is None and started and not self.believers_over():
                players = time.monotonic() - t_up
            await asyncio.sleep(0.1)
        return heal, players, sorted(pending)

    # ---------------------------------------------------------------- run

    async def run(self):
        a = self.args
        self.population()
        incumbents = [p for p in self.players if p.kind == "incumbent"]
        print(f"chaos: {len(incumbents)} players on {len(self.by_user)} accounts, poll {a.poll} s, "
              f"ttl {a.poll * a.ttl_factor} s, {a.rounds} rounds", flush=True)
        self.spawn()
        await self.healthy()
        # Ramp: every incumbent starts while the server is up.
        tasks = []
        for p in incumbents:
            tasks.append(asyncio.create_task(self.play(p, False)))
            await asyncio.sleep(a.ramp / len(incumbents))
        await asyncio.sleep(a.poll)
        extra_users = sorted(self.extra_limit)
        sample_pool = sorted(u for u in self.by_user if u not in self.extra_limit)
        failed_rounds = 0
        for r in range(1, a.rounds + 1):
            await asyncio.sleep(self.rng.uniform(0.5, 2.0) * a.poll)
            self.round_failed = 0
            wrong_before = len(self.wrong)
            t_kill = time.monotonic()
            self.kill()
            await asyncio.sleep(self.rng.uniform(0.0, a.down_max))
            self.spawn()
            await self.healthy()
            t_up = time.monotonic()
            down = t_up - t_kill
            # One extra per extras account, at once.
            extras = []
            for u in extra_users:
                g = self.extra_grants[u][self.extra_limit[u] + r - 1]
                p = Player(u, g, "extra", self.extra_limit[u], False)
                p.round = r
                self.add(p)
                extras.append(p)
                tasks.append(asyncio.create_task(self.play(p, True)))
            sample = extra_users + self.rng.sample(sample_pool, min(a.sample, len(sample_pool)))
            heal, believers, unhealed = await self.converge(t_up, sample, extras, 4 * a.poll)
            admitted = sum(1 for p in extras if p.sid is not None)
            refused = sum(1 for p in extras if p.state == "refused")
            still = [p.user for p in extras if p.state == "playing"]
            wrong = self.wrong[wrong_before:]
            ok = heal is not None and believers is not None and not still and not wrong
            failed_rounds += not ok
            rec = {
                "round": r, "down_s": round(down, 3), "failed_requests": self.round_failed,
                "heal_s": heal and round(heal, 3), "players_converged_s": believers and round(believers, 3),
                "extras_admitted": admitted, "extras_refused": refused, "extras_still_playing": still,
                "unhealed_accounts": unhealed, "wrong_stops": wrong,
            }
            self.rounds.append(rec)
            print(f"round {r}: down {down:.2f} s, {self.round_failed} failed requests (retried), "
                  f"heal {fmt(heal)}, players under every limit {fmt(believers)}, "
                  f"extras admitted {admitted} / refused {refused} / still playing {len(still)}, "
                  f"wrong stops {len(wrong)}", flush=True)
        self.ending = True
        await asyncio.gather(*tasks)
        live = await self.metric("streamcap_live_sessions", wait=True)
        self.kill()
        report = {
            "players": len(incumbents), "accounts": len(self.by_user), "poll_s": a.poll,
            "ttl_s": a.poll * a.ttl_factor, "rounds": self.rounds, "churned": self.churned,
            "failed_requests_total": self.failed, "wrong_stops": self.wrong,
            "live_sessions_after_stop": live,
        }
        if a.report:
            with open(a.report, "w") as f:
                json.dump(report, f, indent=2)
        heals = [x["heal_s"] for x in self.rounds if x["heal_s"] is not None]
        conv = [x["players_converged_s"] for x in self.rounds if x["players_converged_s"] is not None]
        print(f"chaos: {len(self.rounds)} rounds, wrong stops {len(self.wrong)}, "
              f"heal max {fmt(max(heals, default=None))} (poll {a.poll} s), "
              f"players converged max {fmt(max(conv, default=None))}, "
              f"failed requests {self.failed} (all retried), churned {self.churned}, "
              f"live sessions after every player stopped: {live}", flush=True)
        for user, why in self.wrong[:20]:
            print(f"  wrong stop: {user}: {why}", flush=True)
        return 1 if self.wrong or failed_rounds or live not in (0, 0.0) else 0

    async def metric(self, name, wait=False):
        """A gauge from /metrics; with `wait`, waits up to 3 s for it to reach 0."""
        deadline = time.monotonic() + (3.0 if wait else 0.0)
        while True:
            value = None
            try:
                raw = await raw_get(self.args.admin_port, "/metrics")
                for line in raw.splitlines():
                    if line.startswith(name + " "):
                        value = float(line.split()[1])
            except OSError:
                pass
            if value == 0 or time.monotonic() >= deadline:
                return value
            await asyncio.sleep(0.25)


async def raw_get(port, path):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".encode())
    data = await reader.read()
    writer.close()
    return data.decode("utf-8", "replace").split("\r\n\r\n", 1)[-1]


def fmt(x):
    return "n/a" if x is None else f"{x:.2f} s"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the streamcap binary")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--admin-port", type=int, required=True)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--poll", type=int, default=2)
    ap.add_argument("--ttl-factor", type=int, default=3)
    ap.add_argument("--down-max", type=float, default=1.5, help="longest outage, seconds (below the ttl)")
    ap.add_argument("--max-limit", type=int, default=4, help="account limits 1..N")
    ap.add_argument("--users-per-group", type=int, default=8, help="accounts per (limit, policy, full?) group")
    ap.add_argument("--extras-users", type=int, default=10, help="accounts per limit 1-3 that get extras")
    ap.add_argument("--sample", type=int, default=30, help="other accounts whose healing is timed each round")
    ap.add_argument("--extras-policy", default="reject_new",
                    help="policy of the extras accounts; evict_oldest makes the incumbents lose, "
                         "which must fail the run (a self-test of the checks)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--ramp", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--report", help="write a JSON report here")
    ap.add_argument("--server-log", default=os.devnull)
    ap.add_argument("--pid-file", help="write the running server's pid here")
    args = ap.parse_args()
    if args.down_max + 1.1 * args.poll >= args.poll * args.ttl_factor:
        ap.error("--down-max plus a poll must stay below the token ttl (poll x ttl-factor)")
    chaos = Chaos(args)
    try:
        code = asyncio.run(chaos.run())
    finally:
        chaos.kill()
    sys.exit(code)


if __name__ == "__main__":
    main()
