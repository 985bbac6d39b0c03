#!/usr/bin/env bash
# Prepare a Debian 12 host for building berth, running it and its tests.
# Idempotent; run as root. up.sh and test.sh run it first.
#
#   sudo integration/setup.sh            everything below
#   sudo integration/setup.sh --install  only the packages to build and run the
#                                        agent, and the toolchain check (steps 1-2;
#                                        systemd/install.sh runs this)
#
# 1. Installs the Debian packages the build and the tests need (only when some
#    are missing), then checks that every file and command they need is there,
#    naming the package of a missing one. integration/fresh-host.sh proves the
#    list on a minimal Debian 12 root. kubectl (1.27-1.33) is checked, not
#    installed: Debian 12 has none recent enough (BERTH_REQUIRE_KUBECTL=1 makes
#    its absence an error, as test.sh does).
# 2. Checks for a Rust toolchain (cargo >= 1.88, from rustup).
# 3. Builds the two test images locally (no registry is needed) into
#    $BERTH_IMAGES_DIR (default: <repo>/target/berth-images):
#      busybox-1.36.tar -> localhost/berth/busybox:1.36
#      pause-3.9.tar    -> localhost/berth/pause:3.9   (the pod sandbox image)
#    Rebuilt only when missing (see integration/images/build.sh). The third,
#    localhost/berth/grpc-health:1, holds a binary of the cargo build, so the
#    tests build it on demand (build.sh --grpc-health), not this script.
# 4. Installs the official Python `kubernetes` client (PyPI) into a venv at
#    $BERTH_PYVENV (default /opt/berth/pyvenv), for the cluster end-to-end
#    tests (integration/tests/python/). Skipped when it is already there.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGES_DIR=${BERTH_IMAGES_DIR:-$REPO/target/berth-images}
MIN_RUST=1.88

say() { echo "==> setup: $*"; }
die() { echo "setup.sh: error: $*" >&2; exit 1; }

install_only=0
case ${1:-} in
  --install) install_only=1 ;;
  "") ;;
  *) die "unknown argument $1 (use --install, or nothing)" ;;
esac

[[ $(id -u) == 0 ]] || die "run as root (containerd, mounts and bridges need it): sudo $0"

# --- 1. Debian packages -------------------------------------------------------
# Derived from what the build, the agent and the tests need, not from what some
# machine happens to have: each line is a group (build: cargo build; run: the
# agent on this host; test: the test suite, up.sh and the test images), a file
# or command that is needed, the Debian package that provides it, and who needs
# it. The packages installed are the third column, with --no-install-recommends
# (a Recommends is never counted on), and every file is checked afterwards.
# --install (systemd/install.sh) takes the build and run groups only.
# integration/fresh-host.sh proves the list on a minimal Debian 12 root.
REQUIRED=(
  "build cc                      gcc                  C compiler and linker: every build script links with cc; ring and bundled SQLite compile C"
  "build /usr/include/stdio.h    libc6-dev            C headers and crt files for the same"
  "build protoc                  protobuf-compiler    the CRI and etcd gRPC bindings (tonic-build, prost-build)"
  "build /usr/include/google/protobuf/descriptor.proto libprotobuf-dev protoc's well-known types, imported by etcd-client's .proto files"
  "build /etc/ssl/certs/ca-certificates.crt ca-certificates  TLS to crates.io (cargo) and PyPI"
  "run   containerd              containerd           the CRI runtime the agent drives"
  "run   ctr                     containerd           image import (up.sh, tests)"
  "run   containerd-shim-runc-v2 containerd           containerd's runc shim"
  "run   runc                    runc                 the default OCI runtime"
  "run   /usr/lib/cni/bridge     containernetworking-plugins  pod networking (CNI bridge)"
  "run   /usr/lib/cni/host-local containernetworking-plugins  pod IPAM"
  "run   /usr/lib/cni/loopback   containernetworking-plugins  pod loopback"
  "run   /usr/lib/cni/portmap    containernetworking-plugins  hostPort"
  "run   iptables                iptables             CNI bridge masquerade and portmap rules"
  "run   systemd-analyze         systemd              the service manager of systemd/install.sh's unit; systemd-analyze verify in the tests"
  "test  crun                    crun                 the second OCI runtime (runtime handler tests)"
  "test  ip                      iproute2             cluster tests' network namespaces, cleanup of bridges"
  "test  umoci                   umoci                OCI image layouts without a registry (integration/images/build.sh)"
  "test  /bin/busybox            busybox-static       the static busybox inside the test images"
  "test  jq                      jq                   image index checks, up.sh's hints"
  "test  curl                    curl                 up.sh's health checks; cluster tests"
  "test  pgrep                   procps               test.sh's leak check"
  "test  /usr/bin/kill           procps               process signalling in scheduler and apiserver tests (not the shell builtin)"
  "test  etcd                    etcd-server          the API server's etcd backend tests; up.sh with BERTH_STORAGE=etcd"
  "test  etcdctl                 etcd-client          the same"
  "test  python3                 python3              the official Python client's tests"
  "test  /usr/lib/*/faketime/libfaketime.so.1 libfaketime  the wall clock jumping under the agent (host_faults_e2e)"
  "test  /usr/lib/python3*/ensurepip python3-venv     the venv of the Python client (python3 -m venv)"
)
GROUPS_WANTED=" build run test "
((install_only)) && GROUPS_WANTED=" build run "
kept=()
for line in "${REQUIRED[@]}"; do
  read -r group _ <<<"$line"
  [[ $GROUPS_WANTED == *" $group "* ]] && kept+=("$line")
done
REQUIRED=("${kept[@]}")
# BERTH_SETUP_DROP_PACKAGE=NAME deletes NAME's lines from the table, as an
# editor might (integration/fresh-host.sh --drop NAME shows what then breaks).
if [[ -n ${BERTH_SETUP_DROP_PACKAGE:-} ]]; then
  kept=()
  for line in "${REQUIRED[@]}"; do
    read -r _ _ pkg _ <<<"$line"
    [[ $pkg == "$BERTH_SETUP_DROP_PACKAGE" ]] || kept+=("$line")
  done
  (( ${#kept[@]} < ${#REQUIRED[@]} )) || die "BERTH_SETUP_DROP_PACKAGE=$BERTH_SETUP_DROP_PACKAGE is not in the package list"
  say "leaving out $BERTH_SETUP_DROP_PACKAGE (BERTH_SETUP_DROP_PACKAGE)"
  REQUIRED=("${kept[@]}")
fi
PACKAGES=()
for line in "${REQUIRED[@]}"; do
  read -r _ _ pkg _ <<<"$line"
  [[ " ${PACKAGES[*]} " == *" $pkg "* ]] || PACKAGES+=("$pkg")
done
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
# Every need met? Names each missing file with the package that provides it.
absent=0
for line in "${REQUIRED[@]}"; do
  read -r _ what pkg why <<<"$line"
  if [[ $what == /* ]]; then
    compgen -G "$what" >/dev/null && continue
  else
    command -v "$what" >/dev/null && continue
  fi
  echo "setup.sh: error: $what is missing (package $pkg; needed for: $why)" >&2
  absent=1
done
((absent == 0)) || die "required files are missing after installing packages (see above)"

# kubectl is not in Debian 12's archive in a usable version (kubernetes-client
# there is 1.20; the tests drive 1.27-1.33), so it is the one prerequisite besides
# Rust: only the test suite needs it (BERTH_REQUIRE_KUBECTL=1, set by test.sh).
if ((install_only)); then
  :
elif kubectl_version=$(kubectl version --client -o json 2>/dev/null | jq -r '.clientVersion.minor' 2>/dev/null); then
  kubectl_version=${kubectl_version%%[!0-9]*}
  if [[ -z $kubectl_version ]] || ((kubectl_version < 27)); then
    msg="kubectl 1.${kubectl_version:-?} at $(command -v kubectl) is too old: the tests need kubectl 1.27-1.33 (Kubernetes' own apt repository: https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/)"
    [[ ${BERTH_REQUIRE_KUBECTL:-0} == 1 ]] && die "$msg"
    say "note: $msg"
  else
    say "kubectl 1.$kubectl_version"
  fi
else
  msg="kubectl not found: the test suite drives the real kubectl 1.27-1.33, which Debian 12 does not ship; install it from Kubernetes' own apt repository (https://kubernetes.io/docs/tasks/tools/install-kubectl-linux/)"
  [[ ${BERTH_REQUIRE_KUBECTL:-0} == 1 ]] && die "$msg"
  say "note: $msg (only the test suite needs it)"
fi

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

if ((install_only)); then
  say "done (--install: build and run packages, toolchain)"
  exit 0
fi

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
