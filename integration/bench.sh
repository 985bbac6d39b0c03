#!/usr/bin/env bash
# berth's benchmarks: figures, not assertions (machines are noisy). Each prints
# one JSON object on stdout; copies go to target/bench-*.json.
#
# - berth-bench: the agent vs bare CRI calls in one run against one private
#   containerd, plus the agent's RSS (idle, 10 pods).
# - berth-scheduler-bench: in-process scheduling throughput (pods/s) at 1,000
#   and 5,000 nodes.
# - berth-scheduler-e2e-bench: scheduling throughput through the API server
#   (SQLite) at 1,000 and 5,000 nodes (--quick: 100 and 500), the real
#   berth-scheduler process: pods/s, its CPU and RSS.
# - berth-storage-bench: API server storage create and watch throughput on
#   SQLite and on a private etcd.
# - berth-apiserver-bench: the berth-apiserver binary over HTTPS on SQLite and
#   on a private etcd: pod creates/s (concurrency 1 and 16, p50/p99), watch
#   events/s (live and replay), list latency, RSS idle and with N pods; watch
#   fan-out to 1,000 watchers (--quick: 100); RSS with 10,000 and 50,000 pods
#   stored (--quick: 2,000); 5,000 nodes renewing Leases every 10 s with the
#   node lifecycle controller's pass timed (--quick: 500).
# - berth-probe-bench: what probes cost the agent (and containerd): 110 pods
#   (--quick: 20) without probes, with httpGet + tcpSocket + gRPC probes every
#   second, and with one exec probe every second; agent CPU (% of one core)
#   and RSS, containerd and shim CPU, the pods' cgroup CPU; and the floor: the
#   same tcpSocket/httpGet connections made by a minimal blocking client, its
#   thread's CPU beside the agent's prober thread.
#
# - berth-detect-bench: how fast a SIGKILLed container shows on /pods (p50/p99/
#   max over K kills at 10 and 100 pods; --quick: 10 pods, 20 kills) with
#   containerd's event service followed and relist-only, side by side, plus
#   the agent's idle CPU and RSS.
#
#   sudo integration/bench.sh [--iterations N] [--quick]
# --quick: short scheduler, storage, API server and probe runs (what CI uses).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
iterations=5 quick=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --iterations) iterations=$2; shift 2 ;;
    --quick) quick=(--quick); shift ;;
    *) echo "bench.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [[ ${BERTH_SKIP_SETUP:-0} != 1 ]]; then
  bash integration/setup.sh >&2
fi
echo "bench: building" >&2
# The same build as integration/test.sh (whole workspace, all targets): a
# narrower one resolves features differently (dev-dependency features such as
# berth-cri/fake) and rebuilds half the workspace a second time.
cargo build --locked --workspace --all-targets >&2
mkdir -p target
echo "bench: agent vs raw CRI" >&2
BERTH_REQUIRE_RUNTIME=1 ./target/debug/berth-bench "${quick[@]}" --iterations "$iterations" | tee target/bench-agent.json
echo "bench: scheduler" >&2
./target/debug/berth-scheduler-bench "${quick[@]}" | tee target/bench-scheduler.json
echo "bench: scheduler through the API server" >&2
./target/debug/berth-scheduler-e2e-bench "${quick[@]}" | tee target/bench-scheduler-e2e.json
echo "bench: storage" >&2
./target/debug/berth-storage-bench "${quick[@]}" | tee target/bench-storage.json
echo "bench: API server over HTTPS (SQLite and etcd)" >&2
./target/debug/berth-apiserver-bench "${quick[@]}" | tee target/bench-apiserver.json
echo "bench: probe cost (agent and runtime CPU with httpGet/tcpSocket/gRPC and exec probes)" >&2
BERTH_REQUIRE_RUNTIME=1 ./target/debug/berth-probe-bench "${quick[@]}" | tee target/bench-probes.json
echo "bench: failure detection (containerd task events vs relist only)" >&2
BERTH_REQUIRE_RUNTIME=1 ./target/debug/berth-detect-bench "${quick[@]}" | tee target/bench-detect.json
# The report: regenerated from the JSON above, never edited by hand. Full mode
# writes the repository's BENCHMARKS.md and docs/bench/*.svg; --quick (CI)
# writes beside the JSON in target/.
if [[ ${#quick[@]} -eq 0 ]]; then
  ./target/debug/berth-bench-report --input target --output BENCHMARKS.md --plots docs/bench
else
  ./target/debug/berth-bench-report --input target --output target/BENCHMARKS.md --plots target/bench-plots
fi
