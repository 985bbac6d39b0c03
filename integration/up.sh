#!/usr/bin/env bash
# Run berth on this host, on the example manifests: the README's quick start.
#
#   sudo integration/up.sh            start (or keep) containerd-for-berth and the agent
#   sudo integration/up.sh --cluster  the same plus the control plane on this host:
#                                     berth-apiserver (SQLite; BERTH_STORAGE=etcd for a
#                                     private etcd), berth-scheduler, and the agent joined
#                                     to it with a node kubeconfig; prints the KUBECONFIG
#   sudo integration/up.sh --stop     stop everything it started (pods keep running in
#                                     their shims and are adopted again on the next start)
#
# What it does: integration/setup.sh (packages, test images), builds
# berth-agent, starts a containerd of berth's own (it does not touch a system
# containerd):
#   config  /etc/berth/containerd.toml   (written by integration/containerd-config.sh)
#   root    /var/lib/berth/containerd    state /run/berth/containerd
#   socket  /run/berth/containerd/containerd.sock
#   CNI     /etc/berth/cni/net.d: bridge berth0, 10.88.0.0/16, IPAM data /var/lib/berth/cni
#   log     /var/log/berth-containerd.log, pid file /run/berth/containerd.pid
# imports the busybox and pause images, copies examples/manifests/* into
# /etc/berth/manifests when that directory is empty, and starts the agent
# (log /var/log/berth-agent.log, pid file /run/berth/agent.pid).
#
# --cluster adds:
#   berth-apiserver  data /var/lib/berth-apiserver (admin.kubeconfig, tokens, pki, SQLite),
#                    HTTPS on 127.0.0.1:6443, log /var/log/berth-apiserver.log
#   etcd             (BERTH_STORAGE=etcd only) data /var/lib/berth/etcd, 127.0.0.1:2379,
#                    log /var/log/berth-etcd.log
#   berth-scheduler  log /var/log/berth-scheduler.log, as user system:kube-scheduler
#                    (/var/lib/berth-apiserver/scheduler.kubeconfig; RBAC role of that name)
#   the agent        with --kubeconfig /etc/berth/node.kubeconfig (user system:node:<host>)
#
# Environment: BERTH_STATUS_ADDRESS (default 127.0.0.1:10255), BERTH_STORAGE
# (sqlite|etcd, --cluster only).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGES_DIR=${BERTH_IMAGES_DIR:-$REPO/target/berth-images}
STATUS_ADDRESS=${BERTH_STATUS_ADDRESS:-127.0.0.1:10255}

CD_CONFIG=/etc/berth/containerd.toml
CD_ROOT=/var/lib/berth/containerd
CD_STATE=/run/berth/containerd
CD_SOCKET=$CD_STATE/containerd.sock
CD_LOG=/var/log/berth-containerd.log
CD_PID=/run/berth/containerd.pid
CNI_CONF_DIR=/etc/berth/cni/net.d
CNI_DATA_DIR=/var/lib/berth/cni
BRIDGE=berth0
SUBNET=10.88.0.0/16

MANIFESTS=/etc/berth/manifests
AGENT_ROOT=/var/lib/berth
POD_LOGS=/var/log/pods
AGENT_LOG=/var/log/berth-agent.log
AGENT_PID=/run/berth/agent.pid

API_DIR=/var/lib/berth-apiserver
API_LISTEN=127.0.0.1:6443
API_LOG=/var/log/berth-apiserver.log
API_PID=/run/berth/apiserver.pid
ETCD_DIR=/var/lib/berth/etcd
ETCD_LOG=/var/log/berth-etcd.log
ETCD_PID=/run/berth/etcd.pid
SCHED_LOG=/var/log/berth-scheduler.log
SCHED_PID=/run/berth/scheduler.pid
NODE_KUBECONFIG=/etc/berth/node.kubeconfig
STORAGE=${BERTH_STORAGE:-sqlite}

say() { echo "==> up: $*"; }
die() { echo "up.sh: error: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root: sudo $0 $*"

# running <pid-file> <word>: print the PID if that process runs and its command line has <word>.
running() {
  local pid
  [[ -f $1 ]] || return 1
  pid=$(cat "$1")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$2" || return 1
  echo "$pid"
}

# stop_pid <pid-file> <word> <name>: SIGTERM, wait 15 s, SIGKILL. Only that PID.
stop_pid() {
  local pid i
  if ! pid=$(running "$1" "$2"); then
    say "$3 is not running"
    rm -f "$1"
    return 0
  fi
  say "stopping $3 (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    [[ -d /proc/$pid ]] || break
    sleep 0.1
  done
  if [[ -d /proc/$pid ]]; then
    say "$3 did not exit after 15 s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$1"
}

# wait_for <what> <pid-file> <log> <seconds> <command...>: poll the command until it succeeds.
wait_for() {
  local what=$1 pidf=$2 log=$3 secs=$4 i
  shift 4
  for ((i = 0; ; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if [[ ! -d /proc/$(cat "$pidf") ]]; then
      tail -n 30 "$log" >&2 || true
      die "$what exited; see $log"
    fi
    ((i < secs * 10)) || { tail -n 30 "$log" >&2; die "$what not ready after $secs s; see $log"; }
    sleep 0.1
  done
}

cluster=0
case ${1:-} in
  --stop)
    stop_pid "$AGENT_PID" berth-agent berth-agent
    stop_pid "$SCHED_PID" berth-scheduler berth-scheduler
    stop_pid "$API_PID" berth-apiserver berth-apiserver
    stop_pid "$ETCD_PID" "$ETCD_DIR" etcd
    stop_pid "$CD_PID" "$CD_CONFIG" containerd
    say "stopped. Pods' containers keep running in their shims; the next start adopts them."
    exit 0 ;;
  --cluster) cluster=1 ;;
  "") ;;
  *) die "unknown argument $1 (use --cluster, --stop, or nothing to start)" ;;
esac
[[ $STORAGE == sqlite || $STORAGE == etcd ]] || die "BERTH_STORAGE must be sqlite or etcd, not $STORAGE"

bash "$REPO/integration/setup.sh"

if ((cluster)); then
  say "building berth-agent, berth-apiserver, berth-scheduler"
  (cd "$REPO" && cargo build --locked -p berth-agent -p berth-apiserver -p berth-scheduler --bins)
else
  say "building berth-agent"
  (cd "$REPO" && cargo build --locked -p berth-agent)
fi
AGENT_BIN=$REPO/target/debug/berth-agent
API_BIN=$REPO/target/debug/berth-apiserver
SCHED_BIN=$REPO/target/debug/berth-scheduler
[[ -x $AGENT_BIN ]] || die "$AGENT_BIN was not built"

mkdir -p /run/berth "$MANIFESTS" "$AGENT_ROOT" "$POD_LOGS"

# --- containerd for berth ---------------------------------------------------------
if pid=$(running "$CD_PID" "$CD_CONFIG"); then
  say "containerd already running (pid $pid)"
else
  bash "$REPO/integration/containerd-config.sh" \
    --config "$CD_CONFIG" --root "$CD_ROOT" --state "$CD_STATE" --socket "$CD_SOCKET" \
    --cni-conf-dir "$CNI_CONF_DIR" --cni-data-dir "$CNI_DATA_DIR" \
    --bridge "$BRIDGE" --subnet "$SUBNET" >/run/berth/containerd-config.env
  say "starting containerd ($(tr '\n' ' ' </run/berth/containerd-config.env)) log $CD_LOG"
  rm -f "$CD_SOCKET"
  nohup setsid containerd --config "$CD_CONFIG" >>"$CD_LOG" 2>&1 </dev/null &
  echo $! >"$CD_PID"
fi
for ((i = 0; ; i++)); do
  if [[ -S $CD_SOCKET ]] && ctr --address "$CD_SOCKET" version >/dev/null 2>&1; then
    break
  fi
  # (By PID only: right after the fork the command line is still this script's.)
  if [[ ! -d /proc/$(cat "$CD_PID") ]]; then
    tail -n 30 "$CD_LOG" >&2 || true
    die "containerd exited; see $CD_LOG"
  fi
  ((i < 200)) || { tail -n 30 "$CD_LOG" >&2; die "containerd did not answer on $CD_SOCKET within 20 s"; }
  sleep 0.1
done
snapshotter=$(sed -n 's/^snapshotter=//p' /run/berth/containerd-config.env 2>/dev/null || true)
for pair in "pause-3.9.tar localhost/berth/pause:3.9" "busybox-1.36.tar localhost/berth/busybox:1.36"; do
  read -r tar name <<<"$pair"
  if ctr --address "$CD_SOCKET" -n k8s.io images ls -q | grep -qxF "$name"; then
    say "image $name present"
  else
    say "importing $name"
    ctr --address "$CD_SOCKET" -n k8s.io images import ${snapshotter:+--snapshotter "$snapshotter"} "$IMAGES_DIR/$tar" >/dev/null
    ctr --address "$CD_SOCKET" -n k8s.io images ls -q | grep -qxF "$name" \
      || die "importing $IMAGES_DIR/$tar did not create $name"
  fi
done

# --- manifests ----------------------------------------------------------------------
if [[ -z $(ls -A "$MANIFESTS") ]]; then
  cp "$REPO"/examples/manifests/* "$MANIFESTS"/
  say "copied the example manifests into $MANIFESTS"
else
  say "$MANIFESTS is not empty; leaving it as it is"
fi

# --- the control plane (--cluster) -------------------------------------------------
cluster_args=()
if ((cluster)); then
  api_args=(--data-dir "$API_DIR" --listen "$API_LISTEN")
  if [[ $STORAGE == etcd ]]; then
    if pid=$(running "$ETCD_PID" "$ETCD_DIR"); then
      say "etcd already running (pid $pid)"
    else
      mkdir -p "$ETCD_DIR"
      say "starting etcd (data $ETCD_DIR), log $ETCD_LOG"
      nohup setsid etcd --data-dir "$ETCD_DIR" --name berth \
        --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 >>"$ETCD_LOG" 2>&1 </dev/null &
      echo $! >"$ETCD_PID"
    fi
    wait_for etcd "$ETCD_PID" "$ETCD_LOG" 30 etcdctl --endpoints http://127.0.0.1:2379 endpoint health
    api_args+=(--storage etcd --etcd-servers http://127.0.0.1:2379)
  fi
  if pid=$(running "$API_PID" berth-apiserver); then
    say "berth-apiserver already running (pid $pid)"
  else
    say "starting berth-apiserver ($STORAGE), log $API_LOG"
    NO_COLOR=1 nohup setsid "$API_BIN" "${api_args[@]}" >>"$API_LOG" 2>&1 </dev/null &
    echo $! >"$API_PID"
  fi
  wait_for berth-apiserver "$API_PID" "$API_LOG" 60 test -s "$API_DIR/admin.kubeconfig"
  # (curl, not kubectl: running berth needs no kubectl, only using it does.)
  wait_for berth-apiserver "$API_PID" "$API_LOG" 60 \
    curl -fsS --cacert "$API_DIR/pki/ca.crt" "https://$API_LISTEN/readyz"
  if pid=$(running "$SCHED_PID" berth-scheduler); then
    say "berth-scheduler already running (pid $pid)"
  else
    # The scheduler's own least-privileged identity (the bootstrap RBAC role
    # system:kube-scheduler), kept in the API server's private data dir so it
    # goes with the tokens it names.
    if [[ ! -s $API_DIR/scheduler.kubeconfig ]]; then
      (umask 077 && "$API_BIN" kubeconfig --data-dir "$API_DIR" --user system:kube-scheduler \
        >"$API_DIR/scheduler.kubeconfig.tmp")
      mv "$API_DIR/scheduler.kubeconfig.tmp" "$API_DIR/scheduler.kubeconfig"
    fi
    say "starting berth-scheduler (user system:kube-scheduler), log $SCHED_LOG"
    NO_COLOR=1 nohup setsid "$SCHED_BIN" --kubeconfig "$API_DIR/scheduler.kubeconfig" \
      >>"$SCHED_LOG" 2>&1 </dev/null &
    echo $! >"$SCHED_PID"
  fi
  if [[ ! -s $NODE_KUBECONFIG ]]; then
    (umask 077 && "$API_BIN" kubeconfig --data-dir "$API_DIR" --node "$(hostname)" \
      >"$NODE_KUBECONFIG.tmp")
    mv "$NODE_KUBECONFIG.tmp" "$NODE_KUBECONFIG"
    say "wrote $NODE_KUBECONFIG (user system:node:$(hostname))"
  fi
  cluster_args=(--kubeconfig "$NODE_KUBECONFIG")
fi

# --- the agent -------------------------------------------------------------------------
if pid=$(running "$AGENT_PID" berth-agent); then
  say "berth-agent already running (pid $pid); '$0 --stop' first to run a newly built one"
else
  say "starting berth-agent, log $AGENT_LOG"
  echo "=== $(date -u +%FT%TZ) up.sh: starting $AGENT_BIN" >>"$AGENT_LOG"
  # MALLOC_ARENA_MAX=2: as systemd/berth-agent.service runs it (see there).
  NO_COLOR=1 MALLOC_ARENA_MAX=2 nohup setsid "$AGENT_BIN" \
    --container-runtime-endpoint "unix://$CD_SOCKET" \
    --pod-manifest-path "$MANIFESTS" \
    --root-dir "$AGENT_ROOT" \
    --pod-logs-dir "$POD_LOGS" \
    --status-address "$STATUS_ADDRESS" \
    "${cluster_args[@]}" \
    >>"$AGENT_LOG" 2>&1 </dev/null &
  echo $! >"$AGENT_PID"
fi
for ((i = 0; ; i++)); do
  if curl -fsS "$STATUS_ADDRESS/healthz" >/dev/null 2>&1; then
    break
  fi
  if [[ ! -d /proc/$(cat "$AGENT_PID") ]]; then
    tail -n 30 "$AGENT_LOG" >&2 || true
    die "berth-agent exited; see $AGENT_LOG"
  fi
  ((i < 600)) || { tail -n 30 "$AGENT_LOG" >&2; die "berth-agent not healthy after 60 s (curl $STATUS_ADDRESS/healthz)"; }
  sleep 0.1
done

cat <<MSG

berth is running (agent pid $(cat "$AGENT_PID"), containerd pid $(cat "$CD_PID")).

  pods:      curl -s $STATUS_ADDRESS/pods | jq '.items[] | {name: .metadata.name, phase: .status.phase, ip: .status.podIP}'
  health:    curl -s $STATUS_ADDRESS/healthz
  status:    curl -s $STATUS_ADDRESS/status | jq     (runtime, manifest errors, warnings)
  metrics:   curl -s $STATUS_ADDRESS/metrics
  manifests: $MANIFESTS   (add, edit or delete *.yaml; the agent follows)
  pod logs:  $POD_LOGS/<namespace>_<pod>_<uid>/<container>/<restart>.log
  logs:      $AGENT_LOG, $CD_LOG
  runtime:   ctr --address $CD_SOCKET -n k8s.io containers ls
  stop:      $0 --stop
MSG
if ((cluster)); then
  cat <<MSG

The control plane runs too (berth-apiserver pid $(cat "$API_PID") on $STORAGE, berth-scheduler pid $(cat "$SCHED_PID")):

  export KUBECONFIG=$API_DIR/admin.kubeconfig
  kubectl get nodes -o wide
  kubectl apply -f $REPO/examples/cluster/hello.yaml
  kubectl get pods -o wide -w
  kubectl logs hello; kubectl exec hello -- cat /etc/hostname
  logs:      $API_LOG, $SCHED_LOG
MSG
  if ! command -v kubectl >/dev/null; then
    echo "  (kubectl is not installed: Debian 12 has none recent enough; get 1.27-1.33 from"
    echo "   Kubernetes' apt repository, https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/)"
  fi
fi
