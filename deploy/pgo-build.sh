#!/usr/bin/env bash
# A profile-guided release build of streamcap: ~7-15% less CPU per request
# than `cargo build --release` on the machine of BENCHMARKS.md.
#
#   bash deploy/pgo-build.sh [OUT]      # default OUT: target/pgo/streamcap
#
# 1. builds the server instrumented (-Cprofile-generate) in target/pgo-gen;
# 2. trains it on loopback, in dev mode, with the players' protocol: 200k
#    sessions started through the driver, then heartbeats, /healthz and
#    starts of fresh users under wrk (the same Lua scripts as
#    loadtest/bench.sh), a /metrics scrape, and SIGTERM (the profile is
#    written as the process exits);
# 3. merges the profile with llvm-profdata and builds again with
#    -Cprofile-use in target/pgo-use, then copies the binary to OUT.
#
# Same sources, same Cargo.lock (--locked), same release profile: only the
# code layout and the compiler's inlining and branch choices differ. Takes
# ~5 minutes on 2 cores. Needs the llvm-tools component (`rustup component
# add llvm-tools`; its llvm-profdata matches rustc's LLVM, which a distro's
# may not), wrk, curl, python3 and the driver (built here if missing).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${1:-$ROOT/target/pgo/streamcap}
WORK=$(mktemp -d)
trap '[[ -n ${P:-} ]] && kill "$P" 2>/dev/null; rm -rf "$WORK"' EXIT
die() { echo "pgo-build: $*" >&2; exit 1; }

SYSROOT=$(rustc --print sysroot)
PROFDATA=$(find "$SYSROOT/lib/rustlib" -name llvm-profdata -type f | head -1)
[[ -x $PROFDATA ]] || die "llvm-profdata not found: rustup component add llvm-tools"
for tool in wrk curl python3; do command -v "$tool" >/dev/null || die "$tool is required"; done
DRIVER=$ROOT/loadtest/driver/target/release/streamcap-driver
[[ -x $DRIVER ]] || cargo build --release --locked --manifest-path "$ROOT/loadtest/driver/Cargo.toml"

echo "== instrumented build" >&2
RUSTFLAGS="-Cprofile-generate=$WORK/raw" cargo build --release --locked --manifest-path "$ROOT/Cargo.toml" \
    --target-dir "$ROOT/target/pgo-gen" --bin streamcap
# Build scripts and proc macros ran instrumented too: their profiles are noise.
rm -rf "$WORK/raw"

echo "== training" >&2
# shellcheck source=loadtest/profile/lib.sh
source "$ROOT/loadtest/profile/lib.sh"
# The server (and only it: the driver is not instrumented) writes its profile there.
LLVM_PROFILE_FILE="$WORK/raw/streamcap-%p-%m.profraw" \
    start_preloaded "$ROOT/target/pgo-gen/release/streamcap" "$DRIVER" 200000 "$WORK/tokens.tsv" "$WORK/server.log"
"$DRIVER" preload --addr "127.0.0.1:$PORT" --sessions 0 --poll 600 --user-prefix pgo- \
    --grants-out "$WORK/grants.tsv" --grants 100000 --progress 0 >/dev/null
wrk -t1 -c64 -d8s -s "$ROOT/loadtest/wrk/post.lua" "http://127.0.0.1:$PORT" -- "$WORK/tokens.tsv" >/dev/null
wrk -t1 -c64 -d5s -s "$ROOT/loadtest/wrk/healthz.lua" "http://127.0.0.1:$ADMIN" >/dev/null
wrk -t1 -c64 -d4s -s "$ROOT/loadtest/wrk/post.lua" "http://127.0.0.1:$PORT" -- "$WORK/grants.tsv" >/dev/null
curl -sf "http://127.0.0.1:$ADMIN/metrics" >/dev/null
kill -TERM "$P"
wait "$P" || die "the instrumented server did not exit cleanly: $(tail -3 "$WORK/server.log")"
P=
"$PROFDATA" merge -o "$WORK/streamcap.profdata" "$WORK/raw"

echo "== optimised build" >&2
RUSTFLAGS="-Cprofile-use=$WORK/streamcap.profdata" cargo build --release --locked \
    --manifest-path "$ROOT/Cargo.toml" --target-dir "$ROOT/target/pgo-use" --bin streamcap
mkdir -p "$(dirname "$OUT")"
cp "$ROOT/target/pgo-use/release/streamcap" "$OUT"
echo "profile-guided build: $OUT" >&2
