#!/usr/bin/env bash
# Write a containerd (1.6/1.7, config version 2) config for berth plus its CNI
# network config. The one place this config lives: integration/up.sh and the
# Rust test harness (integration/src/containerd.rs) both call this script.
#
#   containerd-config.sh --config FILE --root DIR --state DIR --socket PATH \
#       --cni-conf-dir DIR --cni-data-dir DIR --bridge NAME --subnet CIDR \
#       [--opt-dir DIR] [--snapshotter auto|overlayfs|native] [--log-level LEVEL]
#
# Prints `key=value` lines on stdout describing what it chose
# (snapshotter=..., restrict_oom_score_adj=...). Diagnostics go to stderr.
set -euo pipefail

die() { echo "containerd-config.sh: $*" >&2; exit 2; }

config= root= state= socket= cni_conf_dir= cni_data_dir= bridge= subnet= opt_dir=
snapshotter=auto log_level=info
while [[ $# -gt 0 ]]; do
  case $1 in
    --config) config=$2 ;;
    --root) root=$2 ;;
    --state) state=$2 ;;
    --socket) socket=$2 ;;
    --cni-conf-dir) cni_conf_dir=$2 ;;
    --cni-data-dir) cni_data_dir=$2 ;;
    --bridge) bridge=$2 ;;
    --subnet) subnet=$2 ;;
    --opt-dir) opt_dir=$2 ;;
    --snapshotter) snapshotter=$2 ;;
    --log-level) log_level=$2 ;;
    *) die "unknown argument $1" ;;
  esac
  shift 2 || die "$1 needs a value"
done
for v in config root state socket cni_conf_dir cni_data_dir bridge subnet; do
  [[ -n ${!v} ]] || die "--${v//_/-} is required"
done
[[ ${#bridge} -le 15 ]] || die "bridge name $bridge is longer than 15 characters (IFNAMSIZ)"
[[ -n $opt_dir ]] || opt_dir=$root/opt
# sun_path is 108 bytes including the NUL; containerd also listens on $socket.ttrpc.
[[ $(( ${#socket} + 6 )) -lt 108 ]] || die "socket path $socket is too long for a unix socket"

mkdir -p "$root" "$state" "$cni_conf_dir" "$cni_data_dir" "$opt_dir" "$(dirname "$config")" "$(dirname "$socket")"

# overlayfs needs kernel support and an upper filesystem that can hold it
# (not overlay-on-overlay, for example, when this runs inside a container).
# Probe with a real mount where the snapshots will live; otherwise fall back to
# the "native" snapshotter (plain copies: slower, works everywhere).
if [[ $snapshotter == auto ]]; then
  snapshotter=native
  if grep -qw overlay /proc/filesystems 2>/dev/null || modprobe overlay 2>/dev/null; then
    probe=$(mktemp -d "$root/.overlay-probe.XXXXXX")
    mkdir -p "$probe"/{l,u,w,m}
    if mount -t overlay overlay -o "lowerdir=$probe/l,upperdir=$probe/u,workdir=$probe/w" "$probe/m" 2>/dev/null; then
      umount "$probe/m"
      snapshotter=overlayfs
    else
      echo "containerd-config.sh: overlay mount failed under $root; using the native snapshotter" >&2
    fi
    rm -rf "$probe"
  else
    echo "containerd-config.sh: kernel has no overlay filesystem; using the native snapshotter" >&2
  fi
fi
case $snapshotter in overlayfs|native) ;; *) die "unknown snapshotter $snapshotter" ;; esac

# CRI gives the sandbox (pause) container oom_score_adj -998; setting a
# negative oom_score_adj needs CAP_SYS_RESOURCE (capability bit 24). Without it
# (unprivileged containers, some VMs) runc fails every RunPodSandbox with
# "write /proc/self/oom_score_adj: permission denied". restrict_oom_score_adj
# makes CRI clamp the value to containerd's own score instead.
restrict_oom=false
has_cap() { # has_cap <hex-mask-from-/proc/self/status> <bit>
  (( (16#$1 >> $2) & 1 ))
}
cap_eff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
cap_bnd=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
if ! has_cap "$cap_eff" 24 || ! has_cap "$cap_bnd" 24; then
  restrict_oom=true
fi

umask 022

# A second runtime handler, "berth-recorded": runc behind a wrapper that logs
# every invocation to <state>/runc-recorded.log, so a test can prove a pod
# ran under the handler its RuntimeClass names. (crun 1.8, Debian 12's,
# refuses hybrid cgroup hosts; where the host is pure cgroup v2 and crun is
# installed, a "crun" handler is offered too.)
runc_bin=$(command -v runc || echo /usr/sbin/runc)
recorded="$state/runc-recorded"
cat >"$recorded.tmp.$$" <<SH
#!/bin/sh
# Written by integration/containerd-config.sh: record, then run runc.
echo "\$*" >>"$state/runc-recorded.log"
exec "$runc_bin" "\$@"
SH
chmod 0755 "$recorded.tmp.$$"
mv "$recorded.tmp.$$" "$recorded"
crun_runtime=
if [[ $(stat -fc %T /sys/fs/cgroup 2>/dev/null) == cgroup2fs ]] && command -v crun >/dev/null; then
  crun_runtime="
      [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.crun]
        runtime_type = \"io.containerd.runc.v2\"
        [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.crun.options]
          BinaryName = \"$(command -v crun)\"
          SystemdCgroup = false
          Root = \"$state/crun\""
fi

tmp="$config.tmp.$$"
cat >"$tmp" <<TOML
# Written by integration/containerd-config.sh; do not edit by hand.
version = 2
root = "$root"
state = "$state"
# The zero value keeps containerd's own oom_score_adj untouched.
oom_score = 0
# Snapshotters berth never uses: skip probing them at startup.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "$socket"

[ttrpc]
  address = "$socket.ttrpc"

[debug]
  # No debug socket: several containerds run side by side in the tests.
  address = ""
  level = "$log_level"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$opt_dir"

  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "localhost/berth/pause:3.9"
    # "0": pick a free port, so several containerds can run at once.
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    restrict_oom_score_adj = $restrict_oom
    # Network namespaces under <state>/io.containerd.grpc.v1.cri/netns instead
    # of the global /var/run/netns: each containerd keeps its own.
    netns_mounts_under_state_dir = true
    max_container_log_line_size = 16384

    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "$snapshotter"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          # cgroupfs driver: systemd may not be PID 1 (containers, CI VMs).
          SystemdCgroup = false
          # runc's state under our state dir instead of /run/containerd/runc.
          Root = "$state/runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.berth-recorded]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.berth-recorded.options]
          BinaryName = "$recorded"
          SystemdCgroup = false
          Root = "$state/runc"$crun_runtime

    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "$cni_conf_dir"
      max_conf_num = 1
TOML
mv "$tmp" "$config"

# Pod network: one bridge per containerd, host-local IPAM with its own data
# dir. containerd's CRI adds the loopback interface itself (go-cni's
# WithLoNetwork runs the "loopback" plugin from bin_dir), so it is not listed.
tmp="$cni_conf_dir/10-berth.conflist.tmp.$$"
cat >"$tmp" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "berth-$bridge",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{ "subnet": "$subnet" }]],
        "routes": [{ "dst": "0.0.0.0/0" }],
        "dataDir": "$cni_data_dir"
      }
    },
    {
      "type": "portmap",
      "capabilities": { "portMappings": true }
    }
  ]
}
JSON
mv "$tmp" "$cni_conf_dir/10-berth.conflist"

echo "snapshotter=$snapshotter"
echo "restrict_oom_score_adj=$restrict_oom"
