#!/usr/bin/env bash
# THE test command of berth (README and .ci/run call exactly this). Run as root.
#
#   integration/test.sh
#
# 1. integration/setup.sh (packages, toolchain check, test images)
# 2. cargo build --workspace --all-targets --locked   (one dev profile for everything)
# 3. the whole suite: cargo nextest (if installed) or cargo test, --no-fail-fast,
#    with BERTH_REQUIRE_RUNTIME=1 so runtime tests fail instead of skipping
# 4. a leak check: no test containerd, shim, pod, bridge, mount or cluster
#    network namespace may remain
# 5. fuzz/run.sh: every fuzz target for a bounded time (FUZZ_SECONDS, default
#    15 s each) on a new, printed seed (FUZZ_SEED replays one)
# 6. integration/bench.sh, a short run (figures as JSON); BERTH_BENCH=0 skips it
#
# Environment:
#   BERTH_SOAK=1          run the long variants of tests (off by default)
#   BERTH_BENCH=0         skip integration/bench.sh (BERTH_BENCH_ITERATIONS: samples, default 3)
#   BERTH_TEST_THREADS=N  tests run at once (default 4)
#   BERTH_IMAGES_DIR      where the test images are built (default target/berth-images)
# Exits non-zero if anything failed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"

# The suite drives the real kubectl: its absence is an error here, not a skip.
BERTH_REQUIRE_KUBECTL=1 bash integration/setup.sh

export BERTH_REQUIRE_RUNTIME=1
export BERTH_SOAK=${BERTH_SOAK:-0}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
threads=${BERTH_TEST_THREADS:-4}
# A one-shot build: incremental caches would only double the target dir (disk is
# what ran out in CI, not time).
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

echo "==> cargo build --workspace --all-targets --locked"
cargo build --workspace --all-targets --locked

failed=()
summary=$(mktemp)
trap 'rm -f "$summary"' EXIT
if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests; they go first so the suite's summary is last.
  echo "==> cargo test --workspace --doc"
  cargo test --workspace --doc --locked || failed+=("doctests")
  echo "==> cargo nextest run --workspace --no-fail-fast --test-threads $threads"
  cargo nextest run --workspace --no-fail-fast --locked --test-threads "$threads" 2>&1 | tee "$summary" \
    || failed+=("tests")
  # "Summary [ 18.6s] 186 tests run: 186 passed, 0 skipped" (", N failed" when some did)
  passed=$(grep -E '^ *Summary ' "$summary" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}' || true)
  nfailed=$(grep -E '^ *Summary ' "$summary" | grep -oE '[0-9]+ failed' | awk '{s+=$1} END {print s+0}' || true)
else
  echo "==> cargo test --workspace --no-fail-fast -- --test-threads $threads"
  cargo test --workspace --no-fail-fast --locked -- --test-threads "$threads" 2>&1 | tee "$summary" \
    || failed+=("tests")
  passed=$(grep -E '^test result: ' "$summary" | grep -oE '[0-9]+ passed' | awk '{s+=$1} END {print s+0}' || true)
  nfailed=$(grep -E '^test result: ' "$summary" | grep -oE '[0-9]+ failed' | awk '{s+=$1} END {print s+0}' || true)
fi

# Every test instance must have cleaned up after itself. Things of an instance
# whose lock is still held belong to a test running elsewhere right now, and
# are not counted.
echo "==> leak check"
base=${BERTH_TEST_TMP:-/tmp/berth-it}
stale() { # stale <instance-name like c12>: true when no live process holds its lock
  [[ ! -e $base/$1.lock ]] || flock -n "$base/$1.lock" true
}
leaks=()
while read -r line; do
  inst=$(grep -oE "$base/[cak][0-9]+" <<<"$line" | head -1)
  [[ -n $inst ]] && stale "${inst##*/}" && leaks+=("$line")
done < <(
  pgrep -a -f "$base/" || true
  awk -v b="$base/" 'index($5, b) == 1 {print "mount " $5}' /proc/self/mountinfo
  find "$base" -mindepth 1 -maxdepth 1 -type d 2>/dev/null | sed 's/^/dir /'
)
while read -r link; do
  n=${link#brth}
  stale "c$n" && leaks+=("bridge $link")
done < <(ip -o link show 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2); print $2}' | grep -E '^brth[0-9]+$' || true)
# Cluster tests (integration/src/cluster.rs): bridge brk<N>, veths vk<N>a/b and
# network namespaces berth-k<N>-a/b of cluster instance k<N>.
while read -r link; do
  n=${link#brk}; n=${n#vk}; n=${n%[ab]}
  stale "k$n" && leaks+=("cluster link $link")
done < <(ip -o link show 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2); print $2}' | grep -E '^(brk[0-9]+|vk[0-9]+[ab])$' || true)
while read -r ns; do
  n=${ns#berth-k}; n=${n%-*}
  stale "k$n" && leaks+=("netns $ns")
done < <(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^berth-k[0-9]+-[ab]$' || true)
if (( ${#leaks[@]} )); then
  echo "leak check: test instances left things behind:" >&2
  printf '  %s\n' "${leaks[@]}" >&2
  failed+=("leak check")
fi

# The fuzz targets for a bounded time (their regression inputs already ran in
# the suite). A slow input fails only past 3 s here: CI machines vary.
echo "==> fuzz/run.sh"
bash fuzz/run.sh --timeout-ms 3000 || failed+=("fuzz")

# The benchmark prints figures (JSON), asserts nothing; a short run by default,
# BERTH_BENCH=0 to skip it, BERTH_BENCH_ITERATIONS for more samples.
if [[ ${BERTH_BENCH:-1} != 0 ]]; then
  echo "==> integration/bench.sh"
  BERTH_SKIP_SETUP=1 bash integration/bench.sh --quick --iterations "${BERTH_BENCH_ITERATIONS:-3}" || failed+=("bench")
fi

# The plain closing line CI reads: the suite's counts (benchmark aside).
if (( ${#failed[@]} )); then
  echo "==> FAILED: ${failed[*]}" >&2
  echo "tests: ${passed:-0} passed, $(( ${nfailed:-0} > 0 ? ${nfailed:-0} : 1 )) failed"
  exit 1
fi
echo "==> all passed"
echo "tests: ${passed:-0} passed, ${nfailed:-0} failed"
