#!/usr/bin/env python3
"""Mint a streamcap grant (docs/spec.md §2) the way a tenant's backend does.

    pip install blake3
    STREAMCAP_TENANT_KEY=<64 hex> python3 mint_grant.py --tenant acme --user alice --limit 2 \\
        [--kid k1] [--policy reject_new] [--group studio --group-limit 1] \\
        [--device tv-1] [--label "Living room TV"] [--content "ep 1"] [--poll 30] [--valid-secs 300]

The key comes from --key-hex or, better (command lines are visible to other
users of the machine), the STREAMCAP_TENANT_KEY environment variable. Prints
the grant on stdout. In a backend, import mint_grant() and hand the grant to
the player of a signed-in user, for that user only.
"""

import argparse
import base64
import json
import os
import sys
import time

import blake3  # pip install blake3


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mint_grant(tenant: str, key_hex: str, sub: str, limit: int, valid_secs: int = 300, **fields) -> str:
    """Returns `g1.<payload>.<mac>` for user `sub` of `tenant`, valid for `valid_secs`.

    `fields` are the optional claims: kid, policy, group, group_limit, device,
    label, content, poll (None values are left out).
    """
    key = bytes.fromhex(key_hex)
    if len(key) != 32:
        raise ValueError("the tenant key must be 32 bytes (64 hex characters)")
    claims = {"tenant": tenant, "sub": sub, "limit": int(limit), "exp": int(time.time()) + int(valid_secs)}
    claims.update({k: v for k, v in fields.items() if v is not None})
    payload = json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    signed = "g1." + b64url(payload)
    mac = blake3.blake3(signed.encode("ascii"), key=key).digest()
    return signed + "." + b64url(mac)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Mint a streamcap grant.")
    p.add_argument("--tenant", required=True)
    p.add_argument("--key-hex", default=os.environ.get("STREAMCAP_TENANT_KEY"),
                   help="tenant key, 64 hex (default: $STREAMCAP_TENANT_KEY)")
    p.add_argument("--user", required=True, help="the grant's sub")
    p.add_argument("--limit", required=True, type=int)
    p.add_argument("--kid")
    p.add_argument("--policy", choices=["reject_new", "evict_oldest", "reject_new_device"])
    p.add_argument("--group")
    p.add_argument("--group-limit", type=int)
    p.add_argument("--device")
    p.add_argument("--label")
    p.add_argument("--content")
    p.add_argument("--poll", type=int)
    p.add_argument("--valid-secs", type=int, default=300)
    a = p.parse_args(argv)
    if not a.key_hex:
        p.error("no key: pass --key-hex or set STREAMCAP_TENANT_KEY")
    if (a.group is None) != (a.group_limit is None):
        p.error("--group and --group-limit go together")
    print(mint_grant(a.tenant, a.key_hex, a.user, a.limit, a.valid_secs,
                     kid=a.kid, policy=a.policy, group=a.group, group_limit=a.group_limit,
                     device=a.device, label=a.label, content=a.content, poll=a.poll))
    return 0


if __name__ == "__main__":
    sys.exit(main())
