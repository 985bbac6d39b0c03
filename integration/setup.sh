#!/usr/bin/env bash
# Prepare a Debian 12 host for berth's integration tests. Idempotent; run as root.
#
#   sudo integration/setup.sh
#
# 1. Installs the Debian packages the tests need (only when some are missing).
# 2. Checks for a Rust toolchain (cargo >= 1.88, from rustup).
# 3. Builds the two test images locally (no registry is needed) into
#    $BERTH_IMAGES_DIR (default: <repo>/target/berth-images):
#      busybox-1.36.tar -> localhost/berth/busybox:1.36
#      pause-3.9.tar    -> localhost/berth/pause:3.9   (the pod sandbox image)
#    Rebuilt only when missing (see integration/images/build.sh).
# 4. Installs the official Python `kubernetes` client (PyPI) into a venv at
#    $BERTH_PYVENV (default /opt/berth/pyvenv), for the cluster end-to-end
#    tests (integration/tests/python/). Skipped when it is already there.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGES_DIR=${BERTH_IMAGES_DIR:-$REPO/target/berth-images}
MIN_RUST=1.88

say() { echo "==> setup: $*"; }
die() { echo "setup.sh: error: $*" >&2; exit 1; }

[[ $(id -u) == 0 ]] || die "run as root (containerd, mounts and bridges need it): sudo $0"

# --- 1. Debian packages -------------------------------------------------------
# containerd/runc/crun: the runtime; containernetworking-plugins: CNI bridge,
# host-local, loopback, portmap in /usr/lib/cni; umoci + busybox-static + jq:
# the image build; iproute2/iptables: CNI and cleanup; systemd: systemd-analyze
# for the unit test; protobuf-compiler: protoc for the CRI bindings (and
# etcd-client's); etcd-server + etcd-client: the API server's etcd storage
# backend tests (/usr/bin/etcd, etcdctl); python3-venv: the venv of the
# official Python client for the cluster tests.
PACKAGES=(
  containerd runc crun containernetworking-plugins protobuf-compiler
  umoci busybox-static iproute2 iptables systemd ca-certificates curl jq
  etcd-server etcd-client python3 python3-venv
)
missing=()
for pkg in "${PACKAGES[@]}"; do
  # (Not `dpkg -s | grep -q`: grep quits at the match, dpkg gets SIGPIPE and
  # pipefail calls an installed package missing.)
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  if [[ $status != "install ok installed" ]]; then
    missing+=("$pkg")
  fi
done
if (( ${#missing[@]} )); then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "Debian packages: all present"
fi
for bin in containerd ctr runc containerd-shim-runc-v2 umoci jq ip systemd-analyze protoc; do
  command -v "$bin" >/dev/null || die "$bin is still missing after installing packages"
done
for plugin in bridge host-local loopback portmap; do
  [[ -x /usr/lib/cni/$plugin ]] || die "CNI plugin /usr/lib/cni/$plugin is missing"
done

# --- 2. Rust toolchain --------------------------------------------------------
if ! command -v cargo >/dev/null; then
  if [[ -x ${CARGO_HOME:-$HOME/.cargo}/bin/cargo ]]; then
    die "cargo is not on PATH; add ${CARGO_HOME:-$HOME/.cargo}/bin to PATH (sudo resets PATH: use 'sudo -E env PATH=\$PATH $0')"
  fi
  die "cargo not found: install a Rust toolchain >= $MIN_RUST with rustup (https://rustup.rs): curl -sSf https://sh.rustup.rs | sh"
fi
rust_version=$(cargo --version | awk '{print $2}')
if [[ $(printf '%s\n%s\n' "$MIN_RUST" "${rust_version%%-*}" | sort -V | head -1) != "$MIN_RUST" ]]; then
  die "cargo $rust_version is too old; berth needs Rust >= $MIN_RUST (rustup update stable)"
fi
say "cargo $rust_version"

# --- 3. Test images -----------------------------------------------------------
say "images in $IMAGES_DIR"
bash "$REPO/integration/images/build.sh" "$IMAGES_DIR"

# Check the names `ctr images import` will give (from index.json annotations).
check_name() { # check_name <tar> <expected-name>
  local got
  got=$(tar -xOf "$1" ./index.json | jq -r '.manifests[].annotations["io.containerd.image.name"]')
  [[ $got == "$2" ]] || die "$1 would import as '$got', expected '$2'; delete it and rerun"
}
check_name "$IMAGES_DIR/busybox-1.36.tar" localhost/berth/busybox:1.36
check_name "$IMAGES_DIR/pause-3.9.tar" localhost/berth/pause:3.9

# --- 4. Python kubernetes client ---------------------------------------------
# The official client from PyPI, pinned to a release that supports kube 1.33.
PYVENV=${BERTH_PYVENV:-/opt/berth/pyvenv}
PY_KUBERNETES=${BERTH_PY_KUBERNETES:-33.1.0}
if "$PYVENV/bin/python" -c 'import kubernetes' 2>/dev/null; then
  say "python kubernetes client: present in $PYVENV"
else
  say "python kubernetes client $PY_KUBERNETES into $PYVENV"
  rm -rf "$PYVENV"
  /usr/bin/python3 -m venv "$PYVENV"
  "$PYVENV/bin/pip" install -q --disable-pip-version-check "kubernetes==$PY_KUBERNETES"
  "$PYVENV/bin/python" -c 'import kubernetes' || die "the python kubernetes client did not install into $PYVENV"
fi

# --- Notes about this host ----------------------------------------------------
cap_eff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
if (( ! ((16#$cap_eff >> 24) & 1) )); then
  say "note: no CAP_SYS_RESOURCE here; test containerds run with restrict_oom_score_adj = true"
fi
if [[ -d /sys/fs/cgroup/unified || ! -f /sys/fs/cgroup/cgroup.controllers ]]; then
  say "cgroup v1 (cgroupfs driver)"
else
  say "cgroup v2 (cgroupfs driver)"
fi
say "done"
