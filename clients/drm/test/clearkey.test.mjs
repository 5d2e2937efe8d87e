// The test ClearKey licence server (W3C EME ClearKey licence exchange) and the
// committed content's keys, without a browser.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { startClearKeyServer, loadKeys } from '../clearkey-server.mjs';
import { kidsOf } from '../mp4-kids.mjs';
import { freePort } from '../../testkit/server.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const content = path.join(here, '..', 'content');
const keysJson = JSON.parse(readFileSync(path.join(content, 'keys.json'), 'utf8'));
const b64url = (hex) => Buffer.from(hex, 'hex').toString('base64url');

test('every segment is encrypted under a key of keys.json, one key per crypto period, none repeated', () => {
  const keys = loadKeys();
  const segs = readdirSync(path.join(content, 'video')).filter((f) => f.endsWith('.m4s'));
  assert.equal(segs.length, 30);
  const seen = [];
  for (const n of segs.map((f) => Number(f.split('.')[0])).sort((a, b) => a - b)) {
    const k = kidsOf(readFileSync(path.join(content, 'video', `${n}.m4s`)));
    assert.equal(k.seig.length, 1, `segment ${n}`);
    assert.ok(keys.has(k.seig[0]), `segment ${n}: key id ${k.seig[0]} has a key`);
    // The Common System pssh (W3C "cenc" init data) names the same key id: that is what Chromium's 'encrypted' carries.
    assert.ok(k.pssh.some((p) => p.systemId === '1077efecc0b24d02ace33c1e52e2fb4b' && p.kids.includes(k.seig[0])), `segment ${n}: pssh`);
    if (seen.at(-1) !== k.seig[0]) seen.push(k.seig[0]);
  }
  assert.deepEqual(seen, keysJson.periods.map((p) => p.kid));
  assert.equal(new Set(seen).size, seen.length, 'no key id comes back');
  assert.deepEqual(keysJson.periods.map((p) => p.start_s), [0, 12, 22, 32, 42, 52]);
  const init = kidsOf(readFileSync(path.join(content, 'video', 'init.mp4')));
  assert.equal(init.tenc.length, 1, 'the init segment is marked encrypted');
});

test('ClearKey server: JWK set for known key ids, the required header, bad input', async (t) => {
  const requests = [];
  const srv = await startClearKeyServer({
    port: await freePort(),
    requireHeader: { name: 'X-Licence-Auth', value: 'secret-for-demo' },
    onRequest: (r) => requests.push(r),
  });
  t.after(() => srv.close());
  const post = (body, headers = { 'X-Licence-Auth': 'secret-for-demo' }) =>
    fetch(srv.url, { method: 'POST', headers, body });
  const [p0, p3] = [keysJson.periods[0], keysJson.periods[3]];

  // Known and unknown key ids: only the known ones come back, as a W3C ClearKey JWK set.
  let r = await post(JSON.stringify({ kids: [b64url(p0.kid), b64url('00'.repeat(16)), b64url(p3.kid)], type: 'temporary' }));
  assert.equal(r.status, 200);
  assert.equal(r.headers.get('content-type'), 'application/json');
  assert.deepEqual(await r.json(), {
    keys: [
      { kty: 'oct', kid: b64url(p0.kid), k: b64url(p0.key) },
      { kty: 'oct', kid: b64url(p3.kid), k: b64url(p3.key) },
    ],
    type: 'temporary',
  });
  assert.deepEqual(requests.at(-1).kids, [p0.kid, '00'.repeat(16), p3.kid]);
  assert.equal(requests.at(-1).keysSent, 2);

  // None known: 404, no key.
  r = await post(JSON.stringify({ kids: [b64url('11'.repeat(16))] }));
  assert.equal(r.status, 404);
  assert.equal((await r.json()).keys, undefined);

  // Without the credential: 403 and no key, whatever it asks for.
  r = await post(JSON.stringify({ kids: [b64url(p0.kid)] }), {});
  assert.equal(r.status, 403);
  assert.doesNotMatch(await r.text(), new RegExp(b64url(p0.key)));
  r = await post(JSON.stringify({ kids: [b64url(p0.kid)] }), { 'X-Licence-Auth': 'secret-for-other' });
  assert.equal(r.status, 403);

  // Not a licence request.
  for (const body of ['', 'not json', '{}', '{"kids": []}', '{"kids": ["short"]}', '{"kids": [1]}', JSON.stringify({ kids: Array(65).fill(b64url(p0.kid)) })]) {
    r = await post(body);
    assert.equal(r.status, 400, body.slice(0, 40));
  }
  r = await post('x'.repeat(64 * 1024 + 1));
  assert.equal(r.status, 413);
  r = await fetch(srv.url);
  assert.equal(r.status, 405);
  r = await fetch(srv.url.replace('/clearkey', '/other'), { method: 'POST', body: '{}' });
  assert.equal(r.status, 404);
  assert.ok(requests.every((q) => q.status !== 200 || q.headers['x-licence-auth'] === 'secret-for-demo'), 'keys only with the credential');
});
