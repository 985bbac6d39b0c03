#!/usr/bin/env bash
# Fuzz berth's hostile-input parsers (issue 11) with berth-fuzz, the
# stable-toolchain mutational driver in this crate.
#
#   fuzz/run.sh                 CI: every target for 15 s (5 targets, ~75 s)
#   fuzz/run.sh --seconds 30    every target for 30 s
#   fuzz/run.sh --long          by hand: every target for 30 min (FUZZ_LONG_SECONDS)
#   fuzz/run.sh --target spdy --seconds 600 --seed 42    one target, any berth-fuzz flags
#
# Environment: FUZZ_SECONDS (default 15), FUZZ_LONG_SECONDS (default 1800),
# FUZZ_SEED (default: a fresh seed each run, printed in the summary, so CI
# explores new inputs every time and a failure says how to repeat it).
#
# Targets: manifest, quantity, request, patch, spdy (fuzz/src/lib.rs). Seeds
# are fuzz/corpus/<target>/ and fuzz/regressions/<target>/. On a panic or an
# input slower than 1 s, the input is written to fuzz/artifacts/<target>/, its
# path and the panic are printed, and this script exits 1. Fix the code, then
# `cp` the artifact into fuzz/regressions/<target>/: `cargo test -p berth-fuzz`
# replays it from then on.
#
# Exit status: 0 clean, 1 a target failed, 2 usage or build error. The last
# line on stdout is the JSON summary (seed, executions per target).
#
# Coverage-guided runs (cargo-fuzz, libFuzzer) are in fuzz/libfuzzer/, by hand
# only; CI does not depend on them.
set -euo pipefail

cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-15}"
args=()
target_given=0
while [ $# -gt 0 ]; do
    case "$1" in
        --long) seconds="${FUZZ_LONG_SECONDS:-1800}" ;;
        --seconds) seconds="$2"; shift ;;
        --seconds=*) seconds="${1#--seconds=}" ;;
        --target|--target=*) target_given=1; args+=("$1") ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) args+=("$1") ;;
    esac
    shift
done
if [ "$target_given" = 0 ]; then
    args+=(--all)
fi
if [ -n "${FUZZ_SEED:-}" ]; then
    args+=(--seed "$FUZZ_SEED")
fi

# The same build as integration/test.sh (whole workspace, all targets): a
# narrower one (-p berth-fuzz) resolves features differently (berth-cri/fake)
# and rebuilds half the workspace a second time.
cargo build --workspace --all-targets --locked || exit 2
exec "${CARGO_TARGET_DIR:-target}/debug/berth-fuzz" --seconds "$seconds" "${args[@]}"
