// Reads which key ids an encrypted fragmented MP4 uses: the `seig` sample
// group entries (CENC per-sample-group keys, how a key rotation names the key
// of each fragment), `pssh` boxes (with their key ids, version 1) and `tenc`
// default KIDs. Enough of ISO/IEC 14496-12 and 23001-7 for the content in
// clients/drm/content; not a general MP4 parser. Node 20+, no dependencies.
//
//   node clients/drm/mp4-kids.mjs clients/drm/content/video/*.m4s

import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

const CONTAINERS = new Set(['moov', 'trak', 'mdia', 'minf', 'stbl', 'stsd', 'moof', 'traf', 'mvex', 'sinf', 'schi', 'encv', 'enca']);
const hex = (b) => Buffer.from(b).toString('hex');

/**
 * The key ids one MP4 file or segment refers to.
 * @param {Uint8Array} data
 * @returns {{seig: string[], pssh: {systemId: string, kids: string[]}[], tenc: string[]}} hex strings
 */
export function kidsOf(data) {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const out = { seig: [], pssh: [], tenc: [] };
  walk(buf, 0, buf.length, out);
  return out;
}

function walk(buf, start, end, out) {
  let off = start;
  while (off + 8 <= end) {
    let size = buf.readUInt32BE(off);
    const type = buf.toString('latin1', off + 4, off + 8);
    let header = 8;
    if (size === 1) {
      size = Number(buf.readBigUInt64BE(off + 8));
      header = 16;
    } else if (size === 0) {
      size = end - off;
    }
    if (size < header || off + size > end) throw new Error(`bad box ${JSON.stringify(type)} at ${off}`);
    const body = off + header;
    const boxEnd = off + size;
    if (CONTAINERS.has(type)) {
      // stsd: full box + entry count; encv/enca: the sample entry's fixed fields come first.
      const skip = type === 'stsd' ? 8 : type === 'encv' ? 78 : type === 'enca' ? 28 : 0;
      walk(buf, body + skip, boxEnd, out);
    } else if (type === 'pssh') {
      const version = buf[body];
      const systemId = hex(buf.subarray(body + 4, body + 20));
      const kids = [];
      if (version > 0) {
        const n = buf.readUInt32BE(body + 20);
        for (let i = 0; i < n; i++) kids.push(hex(buf.subarray(body + 24 + 16 * i, body + 40 + 16 * i)));
      }
      out.pssh.push({ systemId, kids });
    } else if (type === 'tenc') {
      out.tenc.push(hex(buf.subarray(body + 8, body + 24)));
    } else if (type === 'sgpd') {
      const version = buf[body];
      const groupingType = buf.toString('latin1', body + 4, body + 8);
      let q = body + 8;
      let length = 0;
      if (version === 1) {
        length = buf.readUInt32BE(q);
        q += 4;
      } else if (version >= 2) {
        q += 4; // default_sample_description_index
      }
      const count = buf.readUInt32BE(q);
      q += 4;
      for (let i = 0; i < count && groupingType === 'seig'; i++) {
        let entryLength = length;
        if (version === 1 && length === 0) {
          entryLength = buf.readUInt32BE(q);
          q += 4;
        }
        // CencSampleEncryptionInformationGroupEntry: reserved, crypt/skip, isProtected, Per_Sample_IV_Size, KID.
        out.seig.push(hex(buf.subarray(q + 4, q + 20)));
        q += entryLength || 20;
      }
    }
    off = boxEnd;
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  for (const f of process.argv.slice(2)) {
    const k = kidsOf(readFileSync(f));
    console.log(`${f}\tseig=${k.seig.join(',') || '-'}\tpssh=${k.pssh.map((p) => `${p.systemId}:${p.kids.join('+')}`).join(',') || '-'}\ttenc=${k.tenc.join(',') || '-'}`);
  }
}
