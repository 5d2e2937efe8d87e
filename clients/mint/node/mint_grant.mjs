#!/usr/bin/env node
// Mint a streamcap grant (docs/spec.md §2) the way a tenant's backend does, in Node 20+.
//
//   npm ci                       # in clients/: @noble/hashes (pure JS, audited, has keyed BLAKE3)
//   STREAMCAP_TENANT_KEY=<64 hex> node mint_grant.mjs --tenant acme --user alice --limit 2 \
//       [--kid k1] [--policy reject_new] [--group studio --group-limit 1] \
//       [--device tv-1] [--label "Living room TV"] [--content "ep 1"] [--poll 30] [--valid-secs 300]
//
// The key comes from --key-hex or, better, STREAMCAP_TENANT_KEY. Prints the
// grant. In a backend: import { mintGrant } from './mint_grant.mjs'.

import { blake3 } from '@noble/hashes/blake3.js';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';

const b64url = (bytes) => Buffer.from(bytes).toString('base64url');

/**
 * Mints `g1.<payload>.<mac>` for user `sub` of `tenant`.
 * @param {{tenant: string, keyHex: string, sub: string, limit: number, validSecs?: number,
 *   kid?: string, policy?: string, group?: string, group_limit?: number, device?: string,
 *   label?: string, content?: string, poll?: number}} o
 * @returns {string}
 */
export function mintGrant({ tenant, keyHex, sub, limit, validSecs = 300, ...fields }) {
  if (!/^[0-9a-fA-F]{64}$/.test(keyHex ?? '')) throw new Error('the tenant key must be 64 hex characters');
  const key = Buffer.from(keyHex, 'hex');
  const claims = { tenant, sub, limit, exp: Math.floor(Date.now() / 1000) + validSecs };
  for (const [k, v] of Object.entries(fields)) if (v !== undefined && v !== null) claims[k] = v;
  const signed = `g1.${b64url(Buffer.from(JSON.stringify(claims), 'utf8'))}`;
  const mac = blake3(Buffer.from(signed, 'ascii'), { key });
  return `${signed}.${b64url(mac)}`;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const { values: v } = parseArgs({
    options: {
      tenant: { type: 'string' }, 'key-hex': { type: 'string' }, user: { type: 'string' }, limit: { type: 'string' },
      kid: { type: 'string' }, policy: { type: 'string' }, group: { type: 'string' }, 'group-limit': { type: 'string' },
      device: { type: 'string' }, label: { type: 'string' }, content: { type: 'string' }, poll: { type: 'string' },
      'valid-secs': { type: 'string' },
    },
  });
  const keyHex = v['key-hex'] ?? process.env.STREAMCAP_TENANT_KEY;
  const int = (s) => (s === undefined ? undefined : Number.parseInt(s, 10));
  if (!v.tenant || !v.user || !v.limit || !keyHex) {
    console.error('usage: mint_grant.mjs --tenant T --user U --limit N [--key-hex HEX | $STREAMCAP_TENANT_KEY] [options]');
    process.exit(2);
  }
  if ((v.group === undefined) !== (v['group-limit'] === undefined)) {
    console.error('--group and --group-limit go together');
    process.exit(2);
  }
  console.log(mintGrant({
    tenant: v.tenant, keyHex, sub: v.user, limit: int(v.limit), validSecs: int(v['valid-secs']) ?? 300,
    kid: v.kid, policy: v.policy, group: v.group, group_limit: int(v['group-limit']),
    device: v.device, label: v.label, content: v.content, poll: int(v.poll),
  }));
}
