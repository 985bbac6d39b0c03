#!/usr/bin/env bash
# Install berth-agent as a systemd service.
#
#   sudo systemd/install.sh [path/to/berth-agent]
#
# Without an argument, installs the packages to build and run the agent
# (integration/setup.sh --install) and builds it (cargo build --release). Installs:
#   /usr/local/bin/berth-agent
#   /etc/systemd/system/berth-agent.service
#   /etc/berth/config.yaml           (an existing one is kept)
#   /etc/berth/manifests/ /var/lib/berth/ /var/log/pods/
# then, when systemd is PID 1: systemctl daemon-reload && systemctl enable --now berth-agent.
#
# BERTH_INSTALL_ROOT=/some/dir stages the same files under that directory
# (like DESTDIR) and leaves systemd alone; no root needed then.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=${BERTH_INSTALL_ROOT:-}
ROOT=${ROOT%/}

say() { echo "==> install: $*"; }
die() { echo "install.sh: error: $*" >&2; exit 1; }

if [[ -z $ROOT && $(id -u) != 0 ]]; then
  die "run as root (or set BERTH_INSTALL_ROOT to stage the files elsewhere)"
fi

bin=${1:-}
if [[ -z $bin ]]; then
  command -v cargo >/dev/null || die "cargo not found (install Rust >= 1.88 with rustup, or pass a built binary: $0 path/to/berth-agent)"
  if [[ -z $ROOT ]]; then
    # The packages to build and run the agent (C toolchain, protoc, containerd,
    # runc, CNI plugins), as on a fresh host nothing else installs them.
    bash "$REPO/integration/setup.sh" --install
  fi
  say "building berth-agent (release)"
  (cd "$REPO" && cargo build --release --locked -p berth-agent)
  bin=$REPO/target/release/berth-agent
fi
[[ -f $bin && -x $bin ]] || die "$bin is not an executable file"

install -D -m 0755 "$bin" "$ROOT/usr/local/bin/berth-agent"
say "installed $ROOT/usr/local/bin/berth-agent"
install -D -m 0644 "$REPO/systemd/berth-agent.service" "$ROOT/etc/systemd/system/berth-agent.service"
say "installed $ROOT/etc/systemd/system/berth-agent.service"
if [[ -e $ROOT/etc/berth/config.yaml ]]; then
  say "kept the existing $ROOT/etc/berth/config.yaml (the default is $REPO/systemd/config.yaml)"
else
  install -D -m 0644 "$REPO/systemd/config.yaml" "$ROOT/etc/berth/config.yaml"
  say "installed $ROOT/etc/berth/config.yaml"
fi
install -d -m 0755 "$ROOT/etc/berth/manifests" "$ROOT/var/lib/berth" "$ROOT/var/log/pods"
say "created $ROOT/etc/berth/manifests $ROOT/var/lib/berth $ROOT/var/log/pods"

if [[ -n $ROOT ]]; then
  say "staged under $ROOT; systemd left alone"
  exit 0
fi
if [[ ! -e /lib/systemd/system/containerd.service && ! -e /etc/systemd/system/containerd.service ]]; then
  say "warning: no containerd.service; the unit Requires= it (apt-get install containerd)"
fi
# systemd is PID 1 exactly when /run/systemd/system exists (sd_booted(3)).
if [[ -d /run/systemd/system ]]; then
  systemctl daemon-reload
  systemctl enable --now berth-agent
  say "berth-agent enabled and started: systemctl status berth-agent; journalctl -u berth-agent -f"
else
  say "systemd is not PID 1 on this machine: the unit is installed but not enabled."
  say "run the agent by hand instead: /usr/local/bin/berth-agent --config /etc/berth/config.yaml"
fi
