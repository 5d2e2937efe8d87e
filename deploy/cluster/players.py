#!/usr/bin/env python3
"""Simulated streamcap players for the cluster test (deploy/cluster-test.sh).

Python 3 standard library only. The players are the simulator shared with
the chaos test (loadtest/players/streamcap_players.py): they share a small
pool of keep-alive HTTP/1.1 connections to the load balancer, as players
behind one CDN edge would, and behave as the README's "How a player must
behave" asks:

  201/200      keep playing, use the new token next time, next heartbeat in
               poll_after seconds (+-10 % jitter)
  409          refused at start (never a stop)
  410 / 401    stop for good; recorded with its reason
  403          stop for good (should never happen here)
  net / 5xx    retry the heartbeat with the same token (0.25, 0.5, 1 ... s)
               until expires_at; then the session is lost (recorded)

Scenario (one run, driven from here so the players see every event):

  ramp     start every in-limit player and every over-limit user's
           `limit` incumbents, then one extra per over-limit user (409)
  steady   a few poll windows
  kill     just before it, stop one player of --stop-users in-limit users
           (on the node about to be killed) from another device of the
           user: a kick with a grant and a new start, or a start with
           ?replace= of it, alternately; run --hook-kill (SIGKILL one
           node); at once start 2 extras per over-limit user (a survivor
           that does not know the user yet admits them: the cluster is over
           the limit for that user)
  add      the same stops just before it (users at random: about one in
           four moves to the new node); run --hook-add (a fourth node joins
           the hash ring); the same extras
  end      players stop their sessions (DELETE); one token lifetime later
           every node must be back to 0 live sessions

After each event, the limit is checked three ways:
  +1 window   server side, every node's list queried directly: the node a
              user's traffic now goes to holds at most `limit` live sessions
              (cluster-wide distinct ids and sums are reported as well; they
              include copies left on a node the user no longer reaches)
  +2 windows  player side: no user plays more than `limit` streams (a player
              whose session was stopped hears it at its next heartbeat)
  +1 ttl      every node's list summed, all users: at most `limit` (copies
              left behind have expired)

Routing: HAProxy in the test adds X-Streamcap-Node; a user whose requests go
back to a node they had left ("flap") means the hash is not consistent.

Stops made just before an event must survive it (docs/spec.md §6, §9): the
stopped player hears 410 with its original reason (kicked, replaced) within
two poll windows of the event, and a "lost" stop is one whose player still
plays then (or heard another reason). How long each stopped player played
on after its stop is reported.

Players whose stop is not explained by a limit ("wrong stops") are: any
in-limit player or over-limit incumbent that gets 410/401/403 or loses its
session to expiry, any player stopped on purpose that hears another reason,
and any extra stopped with a reason other than limit_exceeded. Exit status 1
when a check fails.
"""

import argparse
import asyncio
import json
import os
import random
import socket
import sys
import time
from collections import Counter, defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "loadtest", "players"))
from streamcap_players import NetError, Player, Pool, Population, json_of, scrape, stop_summary  # noqa: E402

# ------------------------------------------------------------------ HAProxy


def haproxy_cmd(sock_path, cmd):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect(sock_path)
    s.sendall((cmd + "\n").encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return data.decode()


def haproxy_backend_stats(sock_path, backend):
    """Retries, redispatches and connection/response errors of one backend's servers."""
    text = haproxy_cmd(sock_path, "show stat")
    lines = text.strip().splitlines()
    cols = lines[0].lstrip("# ").split(",")
    out = {}
    for line in lines[1:]:
        row = dict(zip(cols, line.split(",")))
        if row.get("pxname") == backend and row.get("svname") not in ("FRONTEND", "BACKEND"):
            out[row["svname"]] = {k: int(row.get(k) or 0) for k in ("wretr", "wredis", "econ", "eresp")}
            out[row["svname"]]["status"] = row.get("status")
    return out


# --------------------------------------------------------------------- model


class Stats:
    def __init__(self):
        self.phase = "ramp"
        self.by_phase = defaultdict(Counter)
        self.max_ms = defaultdict(float)  # phase -> slowest answered heartbeat, ms

    def lat(self, seconds):
        self.max_ms[self.phase] = max(self.max_ms[self.phase], seconds * 1000)

    def add(self, key, n=1):
        self.by_phase[self.phase][key] += n


class Sim(Population):
    """The players (a Population: the shared simulator) behind the load
    balancer, the events, and the checks."""

    def __init__(self, args):
        super().__init__(Pool.of(args.lb, args.connections, timeout=5.0), backoff_max=1.0)
        self.args = args
        self.nodes = {}  # name -> (api, admin)
        for spec in args.node:
            name, rest = spec.split("=", 1)
            api, admin = rest.split(",")
            self.nodes[name] = (api, admin)
        self.dead = set()
        self.direct = {}  # api -> Pool
        self.stats = Stats()
        self.players = []
        self.tasks = []
        self.route_flaps = Counter()  # phase -> users whose requests went back to a node they had left
        self.last_node = {}
        self.left_nodes = defaultdict(set)
        self.events = {}
        self.checks = []  # (name, ok, detail)
        self.slow = []  # heartbeats answered after more than 1 s
        self.stopped_sids = set()  # sessions a node answered 410/401 for
        self.t_origin = time.time()

    # ---------------------------------------------------------- routing note
    def note_node(self, user, headers):
        node = headers.get("x-streamcap-node")
        if not node:
            return
        last = self.last_node.get(user)
        if last != node:
            if last is not None:
                if node in self.left_nodes[user]:
                    self.route_flaps[self.stats.phase] += 1
                self.left_nodes[user].add(last)
            self.last_node[user] = node

    # ------------------------------------------------ counting, by phase
    # The simulator's hooks see every request the players make.
    OPS = {"start": "start", "heartbeat": "hb", "stop": "stop"}

    def on_answer(self, p, op, status, headers, seconds):
        st = self.stats
        if op in self.OPS:
            st.add(f"{self.OPS[op]}_{status}")
        if op in ("start", "heartbeat"):
            self.note_node(p.user, headers)
        if op == "heartbeat":
            st.lat(seconds)
            if seconds > 1.0:
                self.slow.append((st.phase, round(time.time() - seconds - self.t_origin, 2), round(seconds * 1000),
                                  headers.get("x-streamcap-node"), status))
        if status >= 500:
            self.stats.add("http_5xx")

    def on_net_error(self, p, op, kind):
        self.stats.add("net_errors")
        if op in ("start", "heartbeat"):
            self.stats.add(f"net_{kind}")

    def on_retry(self, p, op):
        self.stats.add({"start": "start_retries", "heartbeat": "hb_retries"}.get(op, "other_retries"))

    def on_stopped(self, p):
        if p.state == "stopped":
            self.stopped_sids.add(p.sid)
        st = self.stats
        expected = (p.kind == "extra" and p.reason == "410 limit_exceeded") or (
            p.kind == "stopped" and p.reason == f"410 {p.expect}")
        st.add("expected_stops" if expected else "wrong_stops")
        if not expected:
            print(f"  WRONG STOP: {p.kind} player of {p.user} ({p.sid}): {p.reason} "
                  f"({p.detail}) [phase {st.phase}]", file=sys.stderr)

    async def begin(self, p):
        """Starts p through the load balancer (3 tries on a net error or 5xx);
        once admitted, it heartbeats in a task of its own."""
        self.stats.add("starts")
        status = await self.start(p, attempts=3)
        if p.state == "playing":
            self.tasks.append(asyncio.ensure_future(self.keep_playing(p)))
        return status

    # ------------------------------------------------------------- checks
    def node_pool(self, api):
        if api not in self.direct:
            self.direct[api] = Pool.of(api, 8, timeout=5.0)
        return self.direct[api]

    def alive_nodes(self):
        return {n: v for n, v in self.nodes.items() if n not in self.dead}

    async def live_per_node(self, users):
        """{user: {node: [session ids]}} from each alive node's list, queried directly."""
        grants = {}
        for p in self.players:
            grants.setdefault(p.user, p.grant)
        out = defaultdict(dict)
        sem = asyncio.Semaphore(32)

        async def one(user, node, api):
            async with sem:
                for _ in range(3):
                    try:
                        status, _, body = await self.node_pool(api).request("GET", f"/v1/users/{user}/sessions", grants[user])
                        break
                    except NetError:
                        await asyncio.sleep(0.1)
                else:
                    raise RuntimeError(f"list of {user} on {node} failed")
                if status != 200:
                    raise RuntimeError(f"list of {user} on {node}: {status}")
                out[user][node] = [s["session_id"] for s in json_of(body)["sessions"]]

        await asyncio.gather(*(one(u, n, api) for u in users for n, (api, _) in self.alive_nodes().items()))
        return out

    async def limit_check(self, label, users, mode):
        """Live sessions per user, from every alive node's list (queried directly).

        mode "window" (one poll window after an event): the node each user's
        traffic now goes to (X-Streamcap-Node of its latest answer) must hold
        at most `limit` live sessions. Across the cluster, the distinct live
        ids are reported too: copies a user left behind on a node it no longer
        reaches (its previous node; after a redispatch, a bystander) stay
        listed until their token expires, even when the user's current node
        has already stopped them, and they can never be renewed.
        mode "sum": every node's answers summed, all users (after one token
        lifetime, when no such copy can be left).
        """
        t0 = time.time()
        live = await self.live_per_node(users)
        limit_of = {p.user: p.limit for p in self.players}
        limit = max(limit_of[u] for u in users)
        worst_cur = worst_union = worst_net = worst_sum = 0
        over_cur = over_union = over_net = over_sum = 0
        no_home = 0
        for u in users:
            per_node = live.get(u, {})
            union = set().union(*per_node.values()) if per_node else set()
            net = union - self.stopped_sids
            total = sum(len(v) for v in per_node.values())
            home = self.last_node.get(u)
            if home not in per_node:
                no_home += 1
            cur = len(per_node.get(home, []))
            worst_cur, worst_union = max(worst_cur, cur), max(worst_union, len(union))
            worst_net, worst_sum = max(worst_net, len(net)), max(worst_sum, total)
            over_cur += cur > limit_of[u]
            over_union += len(union) > limit_of[u]
            over_net += len(net) > limit_of[u]
            over_sum += total > limit_of[u]
        n = f"{len(users)} users x {len(self.alive_nodes())} nodes"
        if mode == "window":
            ok = over_cur == 0 and no_home == 0
            detail = (f"{n}: on each user's current node max {worst_cur} live (limit {limit}), users over {over_cur}; "
                      f"cluster-wide distinct ids max {worst_union} (users over {over_union}), "
                      f"{worst_net} without the ids already answered 410 (users over {over_net}); "
                      f"summed max {worst_sum}")
            if no_home:
                detail += f"; users whose current node is unknown or down: {no_home}"
        else:
            ok = over_sum == 0
            detail = f"{n}: max live/user summed over nodes {worst_sum} (limit {limit}), users over {over_sum}"
        detail += f" [queried in {time.time() - t0:.1f}s]"
        self.checks.append((label, ok, detail))
        print(f"  check {label}: {'ok' if ok else 'FAILED'}: {detail}", file=sys.stderr)
        return {"current": worst_cur, "distinct": worst_union, "distinct_not_stopped": worst_net, "summed": worst_sum}

    def player_check(self, label):
        """What players actually play: at most `limit` per user."""
        playing = Counter(p.user for p in self.players if p.state == "playing")
        limit_of = {p.user: p.limit for p in self.players}
        over = [u for u, c in playing.items() if c > limit_of[u]]
        worst = max((c - limit_of[u] for u, c in playing.items()), default=0)
        extras = sum(1 for p in self.players if p.kind == "extra" and p.state == "playing")
        ok = not over and extras == 0
        detail = (f"users playing more streams than their limit {len(over)} (worst +{max(worst, 0)}), "
                  f"extras still playing {extras}")
        self.checks.append((label, ok, detail))
        print(f"  check {label}: {'ok' if ok else 'FAILED'}: {detail}", file=sys.stderr)
        return max(worst, 0)

    async def heals(self):
        total = {}
        for name, (_, admin) in self.alive_nodes().items():
            try:
                m = await scrape(admin)
            except NetError:
                continue
            total[name] = m
        return total

    def haproxy(self):
        if not self.args.haproxy_socket:
            return {}
        try:
            return haproxy_backend_stats(self.args.haproxy_socket, self.args.haproxy_backend)
        except OSError:
            return {}

    # ----------------------------------------------------------- scenario
    async def stop_some(self, node=None):
        """Stops one playing player of --stop-users in-limit users (on `node`
        if given, by the node their latest answer came from) from another
        device of the user: a kick and a new start, or a start with
        ?replace=, alternately. The new players play on (kind ok)."""
        users = sorted({p.user for p in self.players if p.kind == "ok" and p.state == "playing"
                        and (node is None or self.last_node.get(p.user) == node)})
        random.shuffle(users)
        users = users[:self.args.stop_users]
        before = {u: self.last_node.get(u) for u in users}
        made = []

        async def one(i, user):
            ps = [p for p in self.players if p.user == user and p.kind == "ok" and p.state == "playing"]
            if len(ps) < 2:
                return
            p = random.choice(ps)
            p.kind = "stopped"
            new = await self.stop_other(p, "kick" if i % 2 == 0 else "replace")
            if p.expect is None:
                p.kind = "ok"
            else:
                made.append(p)
            if new is not None:
                new.kind = "ok"
                self.players.append(new)
                if new.state == "playing":
                    self.tasks.append(asyncio.ensure_future(self.keep_playing(new)))
                else:
                    self.stats.add("wrong_stops")
                    print(f"  WRONG: the start after a stop on {user}: {new.reason}", file=sys.stderr)

        await asyncio.gather(*(one(i, u) for i, u in enumerate(users)))
        return made, before

    def stop_check(self, label, made, before):
        """The stops made just before an event: none lost (see the module doc)."""
        sm = stop_summary(made)
        moved = sum(1 for p in made if self.last_node.get(p.user) != before.get(p.user))
        lost = sm["still_playing"] + sm["heard_other_count"]
        ok = lost == 0 and sm["stops"] > 0
        detail = (f"{sm['stops']} stops ({moved} of users that moved), heard 410 with the original reason "
                  f"{sm['heard_original_reason']}, lost {lost} {sm['heard_other'] or ''}; played on after the "
                  f"stop: median {sm['played_after_stop_median_s']} s, max {sm['played_after_stop_max_s']} s")
        self.checks.append((label, ok, detail))
        print(f"  check {label}: {'ok' if ok else 'FAILED'}: {detail}", file=sys.stderr)
        return dict(sm, moved=moved, lost=lost)

    async def extras(self, over_users, n):
        ps = [Player(u, g, "extra", lim) for (u, g, lim) in over_users for _ in range(n)]
        self.players.extend(ps)
        res = await asyncio.gather(*(self.begin(p) for p in ps))
        return Counter(res)

    async def hook(self, cmd):
        proc = await asyncio.create_subprocess_shell(cmd, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"hook failed ({proc.returncode}): {cmd}")
        return json.loads(out.decode().strip().splitlines()[-1])

    async def run(self):
        a = self.args
        t_start = time.time()
        ok_lines = [json.loads(l) for l in open(a.grants_ok) if l.strip()]
        over_lines = [json.loads(l) for l in open(a.grants_over) if l.strip()]
        over_users = []
        seen = set()
        for l in over_lines:
            if l["user"] not in seen:
                seen.add(l["user"])
                over_users.append((l["user"], l["grant"], a.over_limit))
        for l in ok_lines:
            self.players.append(Player(l["user"], l["grant"], "ok", a.ok_limit))
        incumbents = []
        for (u, g, lim) in over_users:
            for _ in range(lim):
                incumbents.append(Player(u, g, "incumbent", lim))
        self.players.extend(incumbents)
        entitled = [p for p in self.players]
        print(f"players: {len(ok_lines)} in-limit (limit {a.ok_limit}) + {len(incumbents)} incumbents of "
              f"{len(over_users)} over-limit users (limit {a.over_limit}); poll {a.poll}s", file=sys.stderr)

        # ramp: spread the starts over ramp seconds
        self.stats.phase = "ramp"
        order = list(entitled)
        random.shuffle(order)
        # incumbents must start before their user's extras: they all start in the ramp, extras after it
        step = a.ramp / max(1, len(order))
        t0 = time.time()
        starters = []
        for i, p in enumerate(order):
            delay = t0 + i * step - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            starters.append(asyncio.ensure_future(self.begin(p)))
        await asyncio.gather(*starters)
        ramp_extra = await self.extras(over_users, 1)
        self.checks.append(("ramp: a user at its limit is refused a further start (409)",
                            ramp_extra.get(409, 0) == len(over_users), f"extras at the ramp: {dict(ramp_extra)}"))
        not_playing = [p for p in entitled if p.state != "playing"]
        self.events["ramp"] = {"extras": dict(ramp_extra), "entitled_not_playing": len(not_playing)}
        if not_playing:
            self.checks.append(("ramp: every entitled player started", False,
                                f"{len(not_playing)} did not: {Counter(p.reason or p.state for p in not_playing)}"))

        # steady
        self.stats.phase = "steady"
        await asyncio.sleep(a.poll * a.steady_windows)
        base = await self.heals()
        hap0 = self.haproxy()
        dist = {n: int(m.get("streamcap_live_sessions", 0)) for n, m in base.items()}
        self.events["steady"] = {"live_sessions_per_node": dist}
        print(f"  steady: live sessions per node {dist}", file=sys.stderr)

        # kill
        self.stats.phase = "kill"
        made_k, before_k = await self.stop_some(a.kill_node)
        t_kill = time.time()
        res = await self.hook(a.hook_kill)
        killed = res["killed"]
        self.dead.add(killed)
        ex = await self.extras(over_users, 2)
        t_extras = time.time()
        print(f"  killed {killed}; extras at once: {dict(ex)} (201 = admitted by a node that does not know "
              f"the user's sessions yet)", file=sys.stderr)
        over_names = [u for u, _, _ in over_users]
        await asyncio.sleep(max(0.0, t_extras + a.poll * 1.1 + 0.5 - time.time()))
        k_win = await self.limit_check("limits after kill, +1 window (server side)", over_names, "window")
        await asyncio.sleep(max(0.0, t_extras + 2 * a.poll * 1.1 + 0.5 - time.time()))
        k_play = self.player_check("limits after kill, +2 windows (players)")
        k_stops = self.stop_check("kill: stops made just before it, +2 windows", made_k, before_k)
        await asyncio.sleep(max(0.0, t_kill + a.poll * a.ttl_factor + 1.5 - time.time()))
        all_users = sorted({p.user for p in self.players})
        k_sum = await self.limit_check("limits after kill, +1 token lifetime (summed over nodes, all users)",
                                       all_users, "sum")
        after_kill = await self.heals()
        hap1 = self.haproxy()
        heals_kill = sum(after_kill[n].get("streamcap_heartbeats_healed_total", 0) -
                         base.get(n, {}).get("streamcap_heartbeats_healed_total", 0) for n in after_kill)
        self.events["kill"] = {"node": killed, "extras": dict(ex), "heals": heals_kill,
                               "seconds_to_heal_window": round(time.time() - t_kill, 1), "stops": k_stops}
        if ex.get(201, 0) == 0:
            self.checks.append(("kill: over-admission exercised", False,
                                "no extra was admitted after the kill: the limit check proved nothing"))

        # add
        self.stats.phase = "add"
        made_a, before_a = await self.stop_some()
        t_add = time.time()
        res = await self.hook(a.hook_add)
        name = res["added"]["name"]
        self.nodes[name] = (res["added"]["api"], res["added"]["admin"])
        t_up = time.time()
        ex2 = await self.extras(over_users, 2)
        t_extras = time.time()
        print(f"  added {name} (up in ring after {t_up - t_add:.1f}s); extras at once: {dict(ex2)}", file=sys.stderr)
        await asyncio.sleep(max(0.0, t_extras + a.poll * 1.1 + 0.5 - time.time()))
        a_win = await self.limit_check("limits after add, +1 window (server side)", over_names, "window")
        await asyncio.sleep(max(0.0, t_extras + 2 * a.poll * 1.1 + 0.5 - time.time()))
        a_play = self.player_check("limits after add, +2 windows (players)")
        a_stops = self.stop_check("add: stops made just before it, +2 windows", made_a, before_a)
        await asyncio.sleep(max(0.0, t_up + a.poll * a.ttl_factor + 1.5 - time.time()))
        a_sum = await self.limit_check("limits after add, +1 token lifetime (summed over nodes, all users)",
                                       all_users, "sum")
        after_add = await self.heals()
        hap2 = self.haproxy()
        heals_add = sum(after_add[n].get("streamcap_heartbeats_healed_total", 0) -
                        after_kill.get(n, {}).get("streamcap_heartbeats_healed_total", 0) for n in after_add)
        self.events["add"] = {"node": name, "extras": dict(ex2), "heals": heals_add, "stops": a_stops}
        if ex2.get(201, 0) == 0:
            self.checks.append(("add: over-admission exercised", False,
                                "no extra was admitted after the add: the limit check proved nothing"))

        # end
        self.stats.phase = "end"
        self.running = False
        await asyncio.gather(*(self.end(p) for p in self.players))
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.sleep(a.poll * a.ttl_factor + 1.5)
        final = await self.heals()
        live_end = {n: int(m.get("streamcap_live_sessions", -1)) for n, m in final.items()}
        records_end = {n: int(m.get("streamcap_records", -1)) for n, m in final.items()}
        self.checks.append(("players stopped: every node back to 0 live sessions after one token lifetime",
                            all(v == 0 for v in live_end.values()),
                            f"streamcap_live_sessions {live_end}, streamcap_records (tombstones) {records_end}"))

        # ------------------------------------------------------- report
        wrong = {ph: c["wrong_stops"] for ph, c in self.stats.by_phase.items()}
        wrong_kill = wrong.get("kill", 0)
        wrong_add = wrong.get("add", 0)
        wrong_all = sum(wrong.values())
        lost = [p for p in self.players if p.kind in ("ok", "incumbent") and p.state in ("stopped", "lost")]

        def hapdelta(h1, h0, key):
            return sum(v[key] - h0.get(s, {}).get(key, 0) for s, v in h1.items())

        phases = ["ramp", "steady", "kill", "add", "end"]
        rows = []
        for ph in phases:
            c = self.stats.by_phase.get(ph, Counter())
            reqs = sum(v for k, v in c.items() if k.startswith(("start_", "hb_", "stop_")) and k[-3:].isdigit())
            rows.append((ph, reqs, c["net_errors"], c["http_5xx"], c["hb_retries"] + c["start_retries"],
                         c["hb_200"], c.get("start_201", 0), c.get("start_409", 0), c["expected_stops"],
                         c["wrong_stops"], self.route_flaps[ph], round(self.stats.max_ms[ph])))
        print()
        print("=" * 100)
        print(f"streamcap cluster test: {len(self.players)} players ({len(entitled)} entitled + "
              f"{len(self.players) - len(entitled)} extras), poll {a.poll}s, ttl {a.poll * a.ttl_factor}s")
        print("-" * 100)
        hdr = ("phase", "requests", "net err", "5xx", "retries", "hb 200", "start 201", "start 409",
               "stops ok", "WRONG", "flaps", "max ms")
        print("{:<8}{:>10}{:>9}{:>6}{:>9}{:>9}{:>11}{:>11}{:>10}{:>7}{:>7}{:>8}".format(*hdr))
        for r in rows:
            print("{:<8}{:>10}{:>9}{:>6}{:>9}{:>9}{:>11}{:>11}{:>10}{:>7}{:>7}{:>8}".format(*r))
        tot = [sum(r[i] for r in rows) for i in range(1, len(hdr) - 1)] + [max(r[-1] for r in rows)]
        print("{:<8}{:>10}{:>9}{:>6}{:>9}{:>9}{:>11}{:>11}{:>10}{:>7}{:>7}{:>8}".format("total", *tot))
        print("-" * 100)
        if hap0:
            print(f"haproxy (backend {a.haproxy_backend}): kill: retries {hapdelta(hap1, hap0, 'wretr')}, "
                  f"redispatches {hapdelta(hap1, hap0, 'wredis')}, conn errors {hapdelta(hap1, hap0, 'econ')}, "
                  f"resp errors {hapdelta(hap1, hap0, 'eresp')}; add: retries {hapdelta(hap2, hap1, 'wretr')}, "
                  f"redispatches {hapdelta(hap2, hap1, 'wredis')}")
        kinds = {ph: {k[4:]: v for k, v in c.items() if k.startswith("net_") and k != "net_errors"}
                 for ph, c in self.stats.by_phase.items()}
        kinds = {ph: v for ph, v in kinds.items() if v}
        if kinds:
            print(f"network errors seen by players, by kind (each retried with the same token): {kinds}")
        print(f"before the kill, live sessions per node: {dist}")
        print(f"kill {killed}: extras {dict(ex)}; heals on survivors {heals_kill:.0f}")
        print(f"add {name}: extras {dict(ex2)}; heals {heals_add:.0f}")
        for ev, st in (("kill", k_stops), ("add", a_stops)):
            print(f"stops just before {ev}: {st['stops']} ({st['moved']} of users that moved), lost {st['lost']}, "
                  f"played on after the stop: median {st['played_after_stop_median_s']} s, "
                  f"max {st['played_after_stop_max_s']} s")
        total_heals = sum(m.get("streamcap_heartbeats_healed_total", 0) for m in final.values())
        print(f"heals (streamcap_heartbeats_healed_total summed over live nodes at the end): {total_heals:.0f}")
        print(f"max live sessions per over-limit user (limit {a.over_limit}), one window after the extras:")
        print(f"  kill: {k_win['current']} on its current node; cluster-wide {k_win['distinct']} distinct ids, "
              f"{k_win['distinct_not_stopped']} not yet stopped, {k_win['summed']} summed; "
              f"+2 windows: players over limit by {k_play}; +ttl: {k_sum['summed']} summed (all users)")
        print(f"  add:  {a_win['current']} on its current node; cluster-wide {a_win['distinct']} distinct ids, "
              f"{a_win['distinct_not_stopped']} not yet stopped, {a_win['summed']} summed; "
              f"+2 windows: players over limit by {a_play}; +ttl: {a_sum['summed']} summed (all users)")
        print("-" * 100)
        self.checks.insert(0, ("kill one node: no wrong stop", wrong_kill == 0 and heals_kill > 0,
                               f"wrong stops {wrong_kill}, heals {heals_kill:.0f}"))
        self.checks.insert(1, ("add a node: no wrong stop", wrong_add == 0 and heals_add > 0,
                               f"wrong stops {wrong_add}, heals {heals_add:.0f}"))
        flaps = sum(self.route_flaps.values())
        self.checks.append(("routing: no user's requests went back to a node they had left", flaps == 0,
                            f"{flaps} returns (X-Streamcap-Node); {len(self.last_node)} users seen"))
        self.checks.append(("whole run: no wrong stop, no entitled player lost", wrong_all == 0 and not lost,
                            f"wrong stops {wrong_all}, entitled players lost {len(lost)}"))
        failed = 0
        for name_, ok, detail in self.checks:
            failed += not ok
            print(f"{'PASS' if ok else 'FAIL'}  {name_}: {detail}")
        if self.slow:
            print(f"heartbeats answered after > 1 s: {len(self.slow)}; first: {self.slow[:5]}")
        print(f"players.py ran {time.time() - t_start:.1f}s")
        print("=" * 100)
        if a.report:
            with open(a.report, "w") as f:
                json.dump({"phases": {ph: dict(self.stats.by_phase.get(ph, {})) for ph in phases},
                           "events": self.events, "checks": self.checks,
                           "route_flaps": dict(self.route_flaps)}, f, indent=1)
        return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lb", required=True, help="host:port of the load balancer")
    ap.add_argument("--node", action="append", default=[], help="name=api_host:port,admin_host:port (each node)")
    ap.add_argument("--grants-ok", required=True, help="JSON lines from streamcap mint: one line per in-limit player")
    ap.add_argument("--grants-over", required=True, help="JSON lines from streamcap mint: one line per over-limit user")
    ap.add_argument("--ok-limit", type=int, required=True)
    ap.add_argument("--over-limit", type=int, required=True)
    ap.add_argument("--poll", type=int, default=2)
    ap.add_argument("--ttl-factor", type=int, default=3)
    ap.add_argument("--ramp", type=float, default=4.0, help="seconds over which players start")
    ap.add_argument("--steady-windows", type=float, default=2)
    ap.add_argument("--connections", type=int, default=48)
    ap.add_argument("--stop-users", type=int, default=60,
                    help="in-limit users of which one player is kicked or replaced just before each event")
    ap.add_argument("--kill-node", default="n1", help="the node --hook-kill kills (stops before it are made there)")
    ap.add_argument("--hook-kill", required=True, help="shell command: kill a node, print {\"killed\": name}")
    ap.add_argument("--hook-add", required=True,
                    help="shell command: add a node, print {\"added\": {\"name\",\"api\",\"admin\"}}")
    ap.add_argument("--haproxy-socket", help="HAProxy stats socket (for retry/redispatch figures)")
    ap.add_argument("--haproxy-backend", default="streamcap")
    ap.add_argument("--report", help="write a JSON report here")
    args = ap.parse_args()
    sys.exit(asyncio.run(Sim(args).run()))


if __name__ == "__main__":
    main()
