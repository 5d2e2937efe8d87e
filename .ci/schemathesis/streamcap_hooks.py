"""Schemathesis hooks for streamcap (loaded through SCHEMATHESIS_HOOKS by run.sh).

- An auth provider that gives every generated request a real credential:
  grants from `streamcap mint --config` (the run's tenant) for start, list,
  kicks and sign-outs, and lease tokens from real starts for heartbeats, own
  stops and licence requests, with the request's `session_id` set to the
  started session. A fixed rotation also sends old tokens (sessions since
  evicted, replaced, kicked or ended), tokens of another session, grants of
  another user, and a grant where a lease token belongs, so the run reaches
  200, 201, 204, 403, 409 and 410 as well as 401, and licence requests reach
  the licence server through the gate (some with `{system}` set to
  `clearkey`, which the tenant has a licence server for).
  Cases whose path parameters are deliberately malformed (negative testing)
  keep them, and get a credential all the same.
- A schema hook that closes every response object of docs/openapi.yaml
  (`additionalProperties: false`) for this run: the document leaves them open
  so that clients ignore fields added later, but the server must answer no
  field the document does not list.
- A tally of (operation, status) written to $STREAMCAP_TALLY, which run.sh
  prints and checks.

Environment: STREAMCAP_BIN (the binary, for `mint`), STREAMCAP_URL (the
server's base URL), STREAMCAP_HOOKS_CONFIG and STREAMCAP_HOOKS_TENANT (the
server's configuration file and the tenant to mint for), STREAMCAP_TALLY
(where to write the tally), STREAMCAP_HOOKS_LOG (if set: one line per
request, for reading a run).
"""

import atexit
import collections
import json
import os
import re
import subprocess
import threading
import urllib.error
import urllib.request
import zlib

import schemathesis

BIN = os.environ["STREAMCAP_BIN"]
BASE = os.environ["STREAMCAP_URL"].rstrip("/")
CONFIG = os.environ["STREAMCAP_HOOKS_CONFIG"]
TENANT = os.environ["STREAMCAP_HOOKS_TENANT"]
TALLY_PATH = os.environ.get("STREAMCAP_TALLY")
LOG_PATH = os.environ.get("STREAMCAP_HOOKS_LOG")
_log = open(LOG_PATH, "w", encoding="utf-8") if LOG_PATH else None

USER_RE = re.compile(r"[A-Za-z0-9._~-]{1,128}\Z")
SID_RE = re.compile(r"[0-9a-f]{16}\Z")
POLICIES = ("reject_new", "evict_oldest", "reject_new_device")

_lock = threading.Lock()
_grants = {}
_tokens = {}  # session id -> (user, lease token) of every session the hooks started
_recent = collections.deque(maxlen=64)  # (user, session id, token), newest last
# The same, for sessions stopped by the run's own requests, by reason.
_stopped = {reason: collections.deque(maxlen=16) for reason in ("ended", "kicked", "replaced", "evicted")}
_stopped_picks = 0
_turn = collections.Counter()  # per operation: the position in the rotation
_tally = collections.Counter()


def _mint(user, policy, limit, device=None, group=None, label=None):
    key = (user, policy, limit, device, group, label)
    if key not in _grants:
        cmd = [BIN, "mint", f"--config={CONFIG}", f"--tenant={TENANT}"]
        cmd += [f"--user={user}", f"--policy={policy}", f"--limit={limit}"]
        if device:
            cmd.append(f"--device={device}")
        if group:
            cmd += [f"--group={group}", "--group-limit=1"]
        if label:
            cmd += [f"--label={label}", f"--content=title for {label}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMCAP_")}
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=10)
        _grants[key] = out.stdout.strip()
    return _grants[key]


def _grant_for(user, turn):
    """The grant a player of `user` would get: its policy, limit and group
    follow from the user's name, so one user's sessions meet one rule set;
    devices and labels vary with the turn."""
    h = zlib.crc32(user.encode())
    policy = POLICIES[h % 3]
    limit = 1 + (h >> 2) % 3
    group = "studio" if (h >> 4) % 4 == 0 else None
    device = f"device-{turn % 4}" if policy == "reject_new_device" else None
    return _mint(user, policy, limit, device=device, group=group, label=f"tv-{turn % 3}")


def _phone_grant(user, turn):
    """A grant under evict_oldest, so a start with it is never refused for the limit."""
    return _mint(user, "evict_oldest", 2, label=f"phone-{turn % 2}")


def _start(user, turn):
    """A real start under evict_oldest (never refused for the limit):
    (user, session id, lease token), or None."""
    grant = _phone_grant(user, turn)
    req = urllib.request.Request(
        f"{BASE}/v1/users/{user}/sessions", method="POST", headers={"Authorization": f"Bearer {grant}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            body = json.load(res)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    _remember(user, body)
    return user, body["session_id"], body["token"]


def _remember(user, body):
    _tokens[body["session_id"]] = (user, body["token"])
    _recent.append((user, body["session_id"], body["token"]))


def _pick(entries, turn):
    return entries[-1 - (turn // 8) % len(entries)] if entries else None


def _pick_stopped():
    """A stopped session, the reasons taken in turn: its heartbeat gets 410."""
    global _stopped_picks
    reasons = list(_stopped)
    for k in range(len(reasons)):
        entries = _stopped[reasons[(_stopped_picks + k) % len(reasons)]]
        if entries:
            _stopped_picks += k + 1
            return entries[-1]
    return None


def _other(user):
    """Another valid user name."""
    return "x" + user[:127]


def _session(user, sid, token):
    return {"credential": token, "user": user, "session_id": sid}


@schemathesis.auth(refresh_interval=None, retry_on=[])
class StreamcapAuth:
    """A credential per case, chosen by a fixed rotation per operation."""

    def get(self, case, ctx):
        op = (case.operation.method.upper(), case.operation.path)
        if op[0] == "OPTIONS":
            return None  # a preflight carries no credential
        params = case.path_parameters or {}
        user = params.get("user")
        user = user if isinstance(user, str) and USER_RE.match(user) else None
        sid = params.get("session_id")
        sid_ok = isinstance(sid, str) and bool(SID_RE.match(sid))
        with _lock:
            turn = _turn[op]
            _turn[op] += 1
            return self._choose(case, user, sid_ok, turn)

    def _choose(self, case, user, sid_ok, turn):
        if user is None:
            # A malformed {user}: the server answers 400 (or 404) whatever
            # the credential; send a valid one so only the path is wrong.
            return {"credential": _grant_for("someone", turn)}
        step = turn % 8
        path = case.operation.path
        if path.endswith("/sessions"):
            if step == 7:
                return {"credential": _grant_for(_other(user), turn)}  # 403
            replace = (case.query or {}).get("replace")
            if step == 6 and (replace is None or (isinstance(replace, str) and SID_RE.match(replace))):
                started = _start(user, turn)  # a start that replaces a live session
                if started:
                    return {"credential": _phone_grant(user, turn), "replace": started[1]}
            return {"credential": _grant_for(user, turn)}
        if not sid_ok:
            # A malformed {session_id}: keep it; a real token all the same.
            started = _start(user, turn)
            return {"credential": started[2] if started else _grant_for(user, turn)}
        if path.endswith("/licence/{system}"):
            return self._licence(user, turn, step)
        if path.endswith("/heartbeat"):
            old = _pick_stopped() if step == 4 else _pick(_recent, turn) if step == 5 else None
            if old:
                return _session(*old)  # 410 (ended, kicked, replaced, evicted), or 200 / 410
            if step == 6:
                started = _start(user, turn)  # a token of another session: 403
                return {"credential": started[2]} if started else None
            if step == 7:
                return {"credential": _grant_for(user, turn)}  # a grant is no lease token: 401
            started = _start(user, turn)
            return _session(*started) if started else None
        # DELETE: own stops and kicks.
        if step == 3 and _recent:
            return _session(*_pick(_recent, turn))  # an own stop, maybe of a stopped session
        if step in (4, 5):
            target = _start(user, turn) if step == 4 else _pick(_recent, turn)
            if target:
                kicker = _grant_for(target[0], turn)
                return {"credential": kicker, "user": target[0], "session_id": target[1]}  # a kick
        if step == 6:
            return {"credential": _grant_for(user, turn)}  # a kick of an id never issued
        if step == 7:
            started = _start(_other(user), turn)  # another user's token: 403
            return {"credential": started[2]} if started else None
        started = _start(user, turn)
        return _session(*started) if started else None

    def _licence(self, user, turn, step):
        """A licence request: a live session's token (through the gate to the
        licence server, or 404 for a system without one), an old token (410,
        or a licence), another session's token (403), a grant (401)."""
        old = _pick_stopped() if step == 4 else _pick(_recent, turn) if step == 5 else None
        if old:
            return _session(*old)
        if step == 6:
            started = _start(user, turn)
            return {"credential": started[2]} if started else None
        if step == 7:
            return {"credential": _grant_for(user, turn)}
        started = _start(user, turn)
        if not started:
            return None
        data = _session(*started)
        if step in (0, 1):
            data["system"] = "clearkey"  # one the tenant has a licence server for
        return data

    def set(self, case, data, ctx):
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data['credential']}"
        for name in ("user", "session_id", "system"):
            if name in data:
                case.path_parameters[name] = data[name]
        if "replace" in data:
            case.query = dict(case.query or {}, replace=data["replace"])


def _close(node):
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node:
            node.setdefault("additionalProperties", False)
        for value in node.values():
            _close(value)
    elif isinstance(node, list):
        for value in node:
            _close(value)


@schemathesis.hook
def before_load_schema(ctx, raw_schema):
    _close(raw_schema.get("components", {}).get("schemas", {}))


@schemathesis.hook
def after_call(ctx, case, response):
    _note_stops(case, response)
    key = f"{case.operation.method.upper()} {case.operation.path} {response.status_code}"
    if response.status_code in (409, 410):
        try:
            body = json.loads(response.content)
            key += f" {body.get('reason') or body.get('error')}" + (" by" if body.get("by") else "")
        except (ValueError, AttributeError):
            pass
    with _lock:
        _tally[key] += 1
        if _log:
            credential = (case.headers or {}).get("Authorization", "")
            kind = credential.split(" ", 1)[-1][:3] if credential else "-"
            params = case.path_parameters or {}
            replace = (case.query or {}).get("replace", "-")
            print(key, "|", params.get("user"), params.get("session_id", "-"), replace, kind, file=_log, flush=True)


def _note_stops(case, response):
    """Remembers the sessions that the run's own requests stopped (a 204
    stop, a 201 start with ?replace= or with evictions), for heartbeats that
    must then answer 410."""
    method, path = case.operation.method.upper(), case.operation.path
    stops = []
    if method == "DELETE" and response.status_code == 204:
        credential = (case.headers or {}).get("Authorization", "")
        reason = "kicked" if " g1." in credential else "ended"
        stops.append(((case.path_parameters or {}).get("session_id"), reason))
    elif method == "POST" and path.endswith("/sessions") and response.status_code == 201:
        stops.append(((case.query or {}).get("replace"), "replaced"))
        try:
            body = json.loads(response.content)
            user = case.path_parameters["user"]
        except (ValueError, KeyError, TypeError):
            body = None
        if isinstance(body, dict) and "session_id" in body:
            with _lock:
                _remember(user, body)
            stops += [(evicted, "evicted") for evicted in body.get("evicted", [])]
    with _lock:
        for sid, reason in stops:
            if isinstance(sid, str) and sid in _tokens:
                user, token = _tokens[sid]
                _stopped[reason].append((user, sid, token))


@atexit.register
def _write_tally():
    if TALLY_PATH:
        with open(TALLY_PATH, "w", encoding="utf-8") as f:
            json.dump(dict(sorted(_tally.items())), f, indent=1)
