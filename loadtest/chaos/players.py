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
  stopped     right before each SIGKILL, one player of each "stops" account
              (limit 2, reject_new, at its limit) is stopped from another
              device of its user: a kick with a grant followed by a new
              start, or a start with ?replace= of it (alternately). The
              restarted server knows nothing of these stops but what the
              user's other tokens carry (docs/spec.md §6): the stopped
              player must hear 410 with its original reason (a "lost" stop
              if it still plays when the round ends), and nobody else of
              the account may be stopped in its place.
  extras      after each restart, one extra player per "extras" account
              (reject_new, already at its limit) starts at once, while the
              server does not know the incumbents yet: it is admitted. When
              the incumbents heal, the extra (the latest started) must be
              stopped with limit_exceeded and must learn it at its next
              heartbeat; a 409 is fine too (the incumbents healed first).

How players behave: as the README's "How a player must behave" asks, by the
simulator shared with the cluster test (loadtest/players/streamcap_players.py):
  200/201     keep playing with the new token, next heartbeat in poll_after
              seconds (+-10 % jitter)
  410/401/403 stop for good
  net error / 5xx   retry with the same token every 0.25 s until
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "players"))
from streamcap_players import NetError, Player, Pool, Population, scrape, stop_summary  # noqa: E402


class Chaos(Population):
    """The players (a Population: the shared simulator) and the server they play against."""

    def __init__(self, args):
        super().__init__(Pool("127.0.0.1", args.port, args.connections), rng=random.Random(args.seed))
        self.args = args
        self.proc = None
        self.players = []
        self.by_user = {}
        self.failed = 0  # requests that failed (network or 5xx), all rounds
        self.wrong = []  # (player user, what)
        self.rounds = []
        self.extra_grants = {}  # user -> grants for its extras, one per round
        self.extra_limit = {}  # user -> limit of an extras account
        self.churned = 0
        self.round_failed = 0
        self.stop_users = []  # accounts whose players are stopped on purpose before each kill
        self.stopped = []  # every player stopped on purpose, all rounds
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
                status, _, _ = await admin.request("GET", "/healthz")
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
                        self.add(Player(line["user"], line["grant"], "incumbent", limit), churn)
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
                self.add(Player(user, g, "incumbent", limit))
        # Accounts at their limit of 2 whose players are kicked or replaced before each kill.
        if a.stop_users:
            for line in self.mint(f"k-{a.seed}", a.stop_users * 2, a.stop_users, 2, "reject_new", False):
                self.add(Player(line["user"], line["grant"], "incumbent", 2))
            self.stop_users = sorted({p.user for p in self.players if p.user.startswith(f"k-{a.seed}")})

    def add(self, p, churn=False, round_=None):
        p.churn = churn  # now and then stops and starts the next episode
        p.round = round_  # extras: the round that started it
        self.players.append(p)
        self.by_user.setdefault(p.user, []).append(p)

    # Counting, through the simulator's hooks: every request that failed
    # (no answer, or a 5xx) was retried or ended in a loss.
    def on_net_error(self, p, op, kind):
        self.failed += 1
        self.round_failed += 1

    def on_answer(self, p, op, status, headers, seconds):
        if status >= 500:
            self.failed += 1
            self.round_failed += 1

    def on_stopped(self, p):
        if p.kind == "stopped":
            if p.reason != f"410 {p.expect}":
                self.wrong.append((p.user, f"stopped as {p.expect}, heard {p.reason}"))
        elif p.kind == "incumbent":
            self.wrong.append((p.user, p.reason))
        elif p.reason != "410 limit_exceeded":
            self.wrong.append((p.user, f"extra: {p.reason}"))

    async def begin(self, p, retry):
        """Starts p; with `retry`, retries network errors until answered (safe
        here: a failed request either never arrived or died with the server).
        An incumbent that does not get its 201 is a wrong stop."""
        await self.start(p, attempts=None if retry else 1)
        if p.state == "playing":
            return True
        if p.kind == "incumbent":
            self.wrong.append((p.user, p.reason))
        return False

    async def turn(self, p):
        if p.churn and self.rng.random() < 0.15:
            # Next episode: stop this session, start another.
            status = await self.end(p, retry=True)
            if status != 204:
                self.stop(p, "stopped", f"churn stop {status}")
                return False
            self.churned += 1
            return await self.begin(p, True)
        return await self.heartbeat(p)

    async def play(self, p, retry_start):
        if not await self.begin(p, retry_start):
            return
        await self.carry_on(p)

    async def carry_on(self, p):
        await self.keep_playing(p)
        await self.end(p, retry=True)

    async def stop_some(self, r, tasks):
        """Right before a kill: one playing player of each stops account is
        kicked (then a new one starts) or replaced (?replace=), alternately.
        The new players are incumbents: they must never be stopped."""
        made = []

        async def one(i, user):
            ps = [p for p in self.by_user[user] if p.kind == "incumbent" and p.state == "playing"]
            if not ps:
                return
            p = self.rng.choice(ps)
            p.kind = "stopped"
            new = await self.stop_other(p, "kick" if (i + r) % 2 == 0 else "replace")
            if p.expect is None:
                p.kind = "incumbent"
            else:
                made.append(p)
            if new is not None:
                new.kind = "incumbent"
                self.add(new)
                if new.state == "playing":
                    tasks.append(asyncio.create_task(self.carry_on(new)))
                else:
                    self.wrong.append((user, f"the start after a stop: {new.reason}"))

        await asyncio.gather(*(one(i, u) for i, u in enumerate(self.stop_users)))
        self.stopped.extend(made)
        return made

    # ---------------------------------------------------------------- checks

    def expected(self, user):
        return {p.sid for p in self.by_user[user] if p.kind == "incumbent" and p.state == "playing"}

    async def sessions_of(self, user):
        ids = await self.listed(user, self.by_user[user][0].grant)
        return None if ids is None else set(ids)

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
                results = await asyncio.gather(*(self.sessions_of(u) for u in pending))
                for u, ids in zip(list(pending), results):
                    if ids is not None and ids == self.expected(u):
                        pending.discard(u)
                if not pending and heal is None:
                    heal = time.monotonic() - t_up
            started = all(p.state != "new" for p in extras)
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
            made = await self.stop_some(r, tasks)
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
                p = Player(u, g, "extra", self.extra_limit[u])
                self.add(p, round_=r)
                extras.append(p)
                tasks.append(asyncio.create_task(self.play(p, True)))
            sample = extra_users + self.rng.sample(sample_pool, min(a.sample, len(sample_pool)))
            heal, believers, unhealed = await self.converge(t_up, sample, extras, 4 * a.poll)
            admitted = sum(1 for p in extras if p.sid is not None)
            refused = sum(1 for p in extras if p.state == "refused")
            still = [p.user for p in extras if p.state == "playing"]
            wrong = self.wrong[wrong_before:]
            stops = stop_summary(made)
            lost = stops["still_playing"] + stops["heard_other_count"]
            ok = heal is not None and believers is not None and not still and not wrong and not lost
            failed_rounds += not ok
            rec = {
                "round": r, "down_s": round(down, 3), "failed_requests": self.round_failed,
                "heal_s": heal and round(heal, 3), "players_converged_s": believers and round(believers, 3),
                "extras_admitted": admitted, "extras_refused": refused, "extras_still_playing": still,
                "unhealed_accounts": unhealed, "wrong_stops": wrong,
                "stops_before_kill": {k: v for k, v in stops.items() if k != "played_after_stop_s"},
                "lost_stops": lost,
            }
            self.rounds.append(rec)
            print(f"round {r}: down {down:.2f} s, {self.round_failed} failed requests (retried), "
                  f"heal {fmt(heal)}, players under every limit {fmt(believers)}, "
                  f"extras admitted {admitted} / refused {refused} / still playing {len(still)}, "
                  f"stops before the kill {stops['stops']}: lost {lost}, "
                  f"played on max {fmt(stops['played_after_stop_max_s'])}, "
                  f"wrong stops {len(wrong)}", flush=True)
        self.running = False
        await asyncio.gather(*tasks)
        live = await self.metric("streamcap_live_sessions", wait=True)
        self.kill()
        report = {
            "players": len(incumbents), "accounts": len(self.by_user), "poll_s": a.poll,
            "ttl_s": a.poll * a.ttl_factor, "rounds": self.rounds, "churned": self.churned,
            "failed_requests_total": self.failed, "wrong_stops": self.wrong,
            "live_sessions_after_stop": live, "stops_before_kills": stop_summary(self.stopped),
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
        st = report["stops_before_kills"]
        print(f"chaos: stops right before a kill {st['stops']}: heard 410 with the original reason "
              f"{st['heard_original_reason']}, lost {st['still_playing'] + st['heard_other_count']}; "
              f"stopped players played on after their stop: median {fmt(st['played_after_stop_median_s'])}, "
              f"max {fmt(st['played_after_stop_max_s'])}", flush=True)
        for user, why in self.wrong[:20]:
            print(f"  wrong stop: {user}: {why}", flush=True)
        return 1 if self.wrong or failed_rounds or live not in (0, 0.0) else 0

    async def metric(self, name, wait=False):
        """A gauge from /metrics; with `wait`, waits up to 3 s for it to reach 0."""
        deadline = time.monotonic() + (3.0 if wait else 0.0)
        while True:
            try:
                value = (await scrape(f"127.0.0.1:{self.args.admin_port}")).get(name)
            except NetError:
                value = None
            if value == 0 or time.monotonic() >= deadline:
                return value
            await asyncio.sleep(0.25)


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
    ap.add_argument("--stop-users", type=int, default=20,
                    help="accounts (limit 2) of which one player is kicked or replaced right before each kill")
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
