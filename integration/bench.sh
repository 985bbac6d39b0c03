#!/usr/bin/env bash
# berth's benchmark: the agent vs bare CRI calls in one run against one private
# containerd, plus the agent's RSS. Prints one JSON object on stdout and keeps a
# copy in target/bench.json. Figures, not assertions: machines are noisy.
#
#   sudo integration/bench.sh [--iterations N]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
if [[ ${BERTH_SKIP_SETUP:-0} != 1 ]]; then
  bash integration/setup.sh >&2
fi
echo "bench: building" >&2
cargo build --locked -p berth-agent -p berth-integration --bins >&2
BERTH_REQUIRE_RUNTIME=1 ./target/debug/berth-bench "$@" | tee target/bench.json
