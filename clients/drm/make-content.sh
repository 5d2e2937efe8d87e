#!/usr/bin/env bash
# Regenerates clients/drm/content/: a 60 s test clip (ffmpeg's testsrc, H.264
# 256x144 at 12 fps, ~90 kbit/s, a key frame every 2 s), packaged by Shaka
# Packager as CENC-encrypted DASH with key rotation (a new key every crypto
# period of 10 s: boundaries at 12, 22, 32, 42 and 52 s), and keys.json with
# every period's key for the test ClearKey licence server.
#
#   bash clients/drm/make-content.sh
#
# Needs ffmpeg (apt-get install -y ffmpeg) and installs the npm package
# shaka-packager 3.4.2 (its bundled packager binary) into a temporary
# directory. The output is committed: CI does not run this.
#
# Keys: packager's raw-key rotation derives period i's key id and key by
# rotating the given ones left by i bytes (i mod 16). The base key id below
# does not repeat within 8 bytes, so no two periods share a key id. keys.json
# is written from the key ids read back from the segments (clients/drm/mp4-kids.mjs),
# and the script fails if one is not a rotation of the base key id.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

PACKAGER_VERSION=3.4.2
BASE_KID=3f1c9a7e5b2d48c6a0e4f81b6d92c573
BASE_KEY=8d2f61c4a97b0e35d1f84a26c90be713
SEGMENT_SECS=2
CRYPTO_PERIOD_SECS=10
DURATION_SECS=60

command -v ffmpeg >/dev/null || { echo "ffmpeg is missing: apt-get install -y ffmpeg" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

npm install --prefix "$tmp/npm" --no-save --no-audit --no-fund --loglevel=error "shaka-packager@$PACKAGER_VERSION" >/dev/null
case "$(uname -m)" in
  x86_64) arch=x64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) echo "no packager binary for $(uname -m)" >&2; exit 1 ;;
esac
packager="$tmp/npm/node_modules/shaka-packager/bin/packager-linux-$arch"

ffmpeg -hide_banner -loglevel error -y \
  -f lavfi -i "testsrc=size=256x144:rate=12:duration=$DURATION_SECS" \
  -c:v libx264 -profile:v main -preset medium -b:v 80k -maxrate 120k -bufsize 240k \
  -x264-params "keyint=$((SEGMENT_SECS * 12)):min-keyint=$((SEGMENT_SECS * 12)):scenecut=0" \
  -pix_fmt yuv420p "$tmp/source.mp4"

rm -rf content
mkdir -p content
"$packager" \
  "in=$tmp/source.mp4,stream=video,init_segment=content/video/init.mp4,segment_template=content/video/\$Number\$.m4s" \
  --enable_raw_key_encryption \
  --keys "label=:key_id=$BASE_KID:key=$BASE_KEY" \
  --protection_scheme cenc --protection_systems CommonSystem --clear_lead 0 \
  --crypto_period_duration "$CRYPTO_PERIOD_SECS" \
  --segment_duration "$SEGMENT_SECS" \
  --generate_static_live_mpd --mpd_output content/manifest.mpd 2>"$tmp/packager.log" \
  || { cat "$tmp/packager.log" >&2; exit 1; }

BASE_KID=$BASE_KID BASE_KEY=$BASE_KEY SEGMENT_SECS=$SEGMENT_SECS CRYPTO_PERIOD_SECS=$CRYPTO_PERIOD_SECS \
  PACKAGER_VERSION=$PACKAGER_VERSION node --input-type=module -e '
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { kidsOf } from "./mp4-kids.mjs";
const env = process.env;
const rotate = (h, i) => { const b = Buffer.from(h, "hex"); const n = i % b.length; return Buffer.concat([b.subarray(n), b.subarray(0, n)]).toString("hex"); };
const segs = readdirSync("content/video").filter((f) => /^\d+\.m4s$/.test(f)).map((f) => Number(f.split(".")[0])).sort((a, b) => a - b);
const periods = [];
for (const n of segs) {
  const k = kidsOf(readFileSync(`content/video/${n}.m4s`));
  if (k.seig.length !== 1) throw new Error(`segment ${n}: expected one seig key id, found ${k.seig.length}`);
  const kid = k.seig[0];
  let index = -1;
  for (let i = 0; i < 16; i++) if (rotate(env.BASE_KID, i) === kid) index = i;
  if (index < 0) throw new Error(`segment ${n}: key id ${kid} is not a rotation of ${env.BASE_KID}`);
  if (!k.pssh.some((p) => p.kids.includes(kid))) throw new Error(`segment ${n}: no pssh names ${kid}`);
  const last = periods[periods.length - 1];
  if (last && last.kid === kid) { last.segments[1] = n; last.end_s = n * Number(env.SEGMENT_SECS); continue; }
  if (periods.some((p) => p.kid === kid)) throw new Error(`key id ${kid} comes back in segment ${n}`);
  periods.push({ index, kid, key: rotate(env.BASE_KEY, index), segments: [n, n], start_s: (n - 1) * Number(env.SEGMENT_SECS), end_s: n * Number(env.SEGMENT_SECS) });
}
const out = {
  note: "Test keys, public on purpose. Period i: key id and key are the base ones rotated left by i bytes (Shaka Packager raw-key rotation).",
  packager: env.PACKAGER_VERSION,
  crypto_period_duration_s: Number(env.CRYPTO_PERIOD_SECS),
  segment_duration_s: Number(env.SEGMENT_SECS),
  periods,
};
writeFileSync("content/keys.json", JSON.stringify(out, null, 2) + "\n");
console.log(periods.map((p) => `period ${p.index}: ${p.start_s}-${p.end_s} s kid ${p.kid}`).join("\n"));
'
du -sh content
