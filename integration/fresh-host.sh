#!/usr/bin/env bash
# Prove that the README's commands work on a fresh Debian 12 host: a clean-room
# check that a green CI on a well-stocked machine cannot hide. Run as root.
#
#   integration/fresh-host.sh [--full-build | --quick] [--keep] [--drop PACKAGE]
#   integration/fresh-host.sh --self-test
#
# 1. A minimal Debian 12 root (mmdebstrap --variant=minbase bookworm, from
#    Debian's archive): no compiler, no curl, no protoc; only what every Debian
#    host has. It is cached as a tarball under $BERTH_FRESH_HOST_CACHE (default
#    /var/cache/berth/fresh-host), keyed by the mmdebstrap recipe below: the
#    cache holds the root *before* any of berth's packages, so every run
#    installs them again and a package dropped from setup.sh's list fails here.
#    Downloaded .deb files are kept in the cache too (what apt downloads is not
#    what it installs: the root never sees a package setup.sh did not ask for).
# 2. Into a copy of that root go, by bind mount: the repository (read-only, so
#    nothing here can write into the checkout) and the host's Rust toolchain
#    (rustup's RUSTUP_HOME read-only and CARGO_HOME, whose registry cache saves
#    the downloads): "a fresh host with only rustup's stable toolchain".
# 3. Inside, in private mount and PID namespaces (every mount and process of
#    the check goes when it ends, kill -9 included), the README's paths:
#      a. systemd/install.sh's: integration/setup.sh --install (the build and
#         run packages only), berth-agent built, installed by systemd/install.sh,
#         its unit checked with systemd-analyze verify, the binary started
#      b. up.sh's and test.sh's: integration/setup.sh, exactly as they run it
#         (every package and its check, the test images, the Python client's
#         venv), then cargo check --workspace --all-targets --locked with a
#         target directory of its own: every build script (C parts, protoc) runs
#         and every crate and test compiles; --full-build: cargo build instead
#         (codegen and links of everything, about twice the time)
# On a failure it names the step, what was missing and the package that
# provides it, and shows the end of the step's log.
#
# --drop PACKAGE deletes one package's lines from setup.sh's list, to see the
# check fail as it would had someone deleted them (e.g. --drop libprotobuf-dev).
# --quick: only setup.sh and cargo check of etcd-client (for --self-test).
# --self-test: proves the check can fail: without gcc, and without
# libprotobuf-dev, it must fail and name the package (.ci/run runs it).
#
# Environment:
#   BERTH_FRESH_HOST_CACHE   cache of the minimal root and of .deb downloads
#   BERTH_FRESH_HOST_MIRROR  Debian mirror (default http://deb.debian.org/debian)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${BERTH_FRESH_HOST_CACHE:-/var/cache/berth/fresh-host}
MIRROR=${BERTH_FRESH_HOST_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${BERTH_FRESH_HOST_SECURITY_MIRROR:-${MIRROR%/debian}/debian-security}
SUITE=bookworm
# Bump to rebuild every cached root.
RECIPE=1

say() { echo "==> fresh-host: $*"; }
die() { echo "fresh-host.sh: error: $*" >&2; exit 1; }

mode=check
keep=0
drop=
self_test=0
while (($#)); do
  case $1 in
    --full-build) mode=build ;;
    --quick) mode=quick ;;
    --self-test) self_test=1 ;;
    --keep) keep=1 ;;
    --drop) drop=${2:?--drop needs a package name}; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (use --full-build, --quick, --self-test, --keep, --drop PACKAGE)" ;;
  esac
  shift
done

[[ $(id -u) == 0 ]] || die "run as root (it builds a Debian root and chroots into it): sudo $0"
started=$(date +%s)

# --self-test: the check must be able to fail. A package deleted from the list
# must fail it, naming that package: the C toolchain (the first build script)
# and protoc's includes (etcd-client's build script, the bug this check was
# written for). --quick stops after etcd-client and its dependencies compile.
if ((self_test)); then
  for pkg in gcc libprotobuf-dev; do
    say "self-test: without $pkg the check must fail and name it"
    out=$(bash "${BASH_SOURCE[0]}" --quick --drop "$pkg" 2>&1) && {
      echo "$out" | tail -n 20 >&2
      die "self-test: the check passed without $pkg"
    }
    if ! grep -qE "^fresh-host.sh: missing: .*\(package $pkg[;)]" <<<"$out"; then
      echo "$out" | tail -n 30 >&2
      die "self-test: the check failed without $pkg but did not name it"
    fi
    grep -E '^fresh-host.sh: (FAILED|missing)' <<<"$out" | sed 's/^/    /'
  done
  say "self-test passed in $(($(date +%s) - started)) s"
  exit 0
fi

# --- the host's side: mmdebstrap and the Rust toolchain -------------------------
if ! command -v mmdebstrap >/dev/null; then
  say "installing mmdebstrap (to build the minimal root)"
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap
fi
command -v unshare >/dev/null || die "unshare not found (package util-linux)"

command -v cargo >/dev/null || die "cargo not found on this host: the check brings the host's Rust toolchain into the root (install it with rustup)"
if command -v rustup >/dev/null; then
  rustup_home=$(rustup show home)
  cargo_home=${CARGO_HOME:-$HOME/.cargo}
  [[ -x $cargo_home/bin/cargo ]] || die "rustup is here but $cargo_home/bin/cargo is not; set CARGO_HOME"
  toolchain_desc="rustup $(rustup --version 2>/dev/null | awk '{print $2}'), $(cargo --version)"
else
  # A toolchain without rustup (a distribution's rustc): its sysroot goes in as it is.
  rustup_home=
  cargo_home=${CARGO_HOME:-$HOME/.cargo}
  sysroot=$(rustc --print sysroot)
  toolchain_desc="$(cargo --version) at $sysroot (no rustup)"
fi
mkdir -p "$cargo_home"

# --- 1. the minimal root, cached by its recipe ----------------------------------
sources=(
  "deb $MIRROR $SUITE main"
  "deb $MIRROR $SUITE-updates main"
  "deb $SECURITY_MIRROR $SUITE-security main"
)
key=$(printf '%s\n' "$RECIPE" "$(mmdebstrap --version)" minbase "$SUITE" "${sources[@]}" | sha256sum | cut -c1-16)
base=$CACHE/minbase-$SUITE-$key.tar
mkdir -p "$CACHE/apt-archives/partial"
# One check at a time: they share the cached root and apt's download cache,
# whose lock a second apt would fail on. Held to the end (children inherit it;
# kill -9 of the whole check releases it).
exec 9>"$CACHE/lock"
if ! flock -n 9; then
  say "another fresh-host check is running; waiting for it"
  flock 9
fi
if [[ -f $base && -s $base ]]; then
  say "minimal root: cached $base"
else
  say "minimal root: mmdebstrap --variant=minbase $SUITE -> $base"
  # Older roots of another recipe are of no more use.
  find "$CACHE" -maxdepth 1 -name 'minbase-*.tar' -delete
  mmdebstrap --mode=root --variant=minbase --format=tar --quiet "$SUITE" "$base.tmp" "${sources[@]}" \
    || { rm -f "$base.tmp"; die "mmdebstrap failed (is Debian's archive reachable at $MIRROR?)"; }
  mv "$base.tmp" "$base"
fi

# Work directories of earlier checks that were killed (kill -9 skips the trap):
# their namespaces died with them, so nothing is mounted there any more.
for old in /var/tmp/berth-fresh-host.*; do
  [[ -d $old ]] || continue
  pid=$(cat "$old/pid" 2>/dev/null || true)
  if [[ -z $pid || ! -d /proc/$pid ]]; then
    say "removing $old, left by a check that did not finish"
    rm -rf --one-file-system "$old"
  fi
done

work=$(mktemp -d /var/tmp/berth-fresh-host.XXXXXX)
echo $$ >"$work/pid"
root=$work/root
logs=$work/logs
cleanup() {
  # The bind mounts live only in the check's own mount namespace, which is
  # gone by now: removing $work cannot reach the repository or the toolchain.
  if ((keep)); then
    say "kept $work (root, logs; the next check removes it)"
  else
    rm -rf --one-file-system "$work"
  fi
}
trap cleanup EXIT
mkdir -p "$root" "$logs"
tar -xf "$base" -C "$root"
# The host's resolver, so apt and pip reach their archives; and no daemon may
# start from a package's postinst inside the root (as in every chroot build).
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# The same for TLS: where this host's network runs through a proxy with its own
# CA (the host's environment names a CA bundle), the root trusts that bundle
# too, through the same variables, from a copy outside ca-certificates' reach.
# This is the network's configuration, not a package: a host on the open
# internet has none of it, and nothing here installs anything.
net_env=()
for var in SSL_CERT_FILE PIP_CERT REQUESTS_CA_BUNDLE CURL_CA_BUNDLE; do
  if [[ -n ${!var:-} && -f ${!var} ]]; then
    if [[ ! -f $root/etc/fresh-host-ca.crt ]]; then
      cp -L "${!var}" "$root/etc/fresh-host-ca.crt"
      net_env+=("CARGO_HTTP_CAINFO=/etc/fresh-host-ca.crt")
    fi
    net_env+=("$var=/etc/fresh-host-ca.crt")
  fi
done
for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL PIP_DEFAULT_TIMEOUT; do
  [[ -n ${!var:-} ]] && net_env+=("$var=${!var}")
done
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"

# What the root holds before setup.sh: nothing berth needs may already be there.
for absent in cc gcc protoc curl containerd jq; do
  if chroot "$root" /bin/sh -c "command -v $absent" >/dev/null 2>&1; then
    die "the minimal root already has $absent: it is not a fresh host (delete $base)"
  fi
done

# --- 2 + 3. inside the root -------------------------------------------------------
# The script that runs in the root, step by step; each step's output goes to
# $logs/<step>.log and its name to $logs/current.
cat >"$root/fresh-host-steps.sh" <<'STEPS'
#!/bin/bash
set -uo pipefail
mode=$1
cd /src/berth
step() { # step <name> <command...>
  local name=$1; shift
  echo "$name" >/logs/current
  echo "==> fresh-host [in the root]: $name: $*"
  local t0=$SECONDS
  if "$@" >"/logs/$name.log" 2>&1; then
    echo "    ok ($((SECONDS - t0)) s)"
  else
    exit 1
  fi
}
export CARGO_TARGET_DIR=/var/tmp/target CARGO_INCREMENTAL=0 CARGO_TERM_COLOR=never
# Dependencies unoptimised here (the workspace builds them at opt-level 2 for
# its benchmarks): which packages a build needs does not depend on it, and it
# halves the time the check adds to CI.
fast=(--config 'profile.dev.package."*".opt-level=0')
# verify exits 0 on mere warnings (an unknown directive, a missing binary), so
# any line about our unit fails the step too.
verify_unit() {
  local out rc=0
  out=$(SYSTEMD_LOG_COLOR=0 systemd-analyze verify /etc/systemd/system/berth-agent.service 2>&1) || rc=$?
  echo "$out"
  ((rc == 0)) || return 1
  ! grep -q berth-agent <<<"$out"
}
if [[ $mode == quick ]]; then
  step setup bash integration/setup.sh
  # etcd-client: the crate whose build script needs protoc's includes; the
  # first build script of all needs cc.
  step check-etcd-client cargo check "${fast[@]}" --locked -p etcd-client
  echo done >/logs/current
  exit 0
fi
# The systemd path first, with only what it installs (setup.sh --install, as
# systemd/install.sh runs it; the agent built in the dev profile, not --release).
step setup-install bash integration/setup.sh --install
step build-agent cargo build "${fast[@]}" --locked -p berth-agent --bin berth-agent
step install bash systemd/install.sh /var/tmp/target/debug/berth-agent
step unit-verify verify_unit
step agent-runs /usr/local/bin/berth-agent --help
# Then up.sh's and test.sh's path: everything, and every target of the workspace.
step setup bash integration/setup.sh
if [[ $mode == build ]]; then
  step build-workspace cargo build --workspace --all-targets --locked
else
  step check-workspace cargo check "${fast[@]}" --workspace --all-targets --locked
fi
step python-client /opt/berth/pyvenv/bin/python -c 'import kubernetes; print(kubernetes.__version__)'
# What the tests and scripts run, tried here, and kept apart from setup.sh's
# table on purpose: a line deleted from that table (with its file check) must
# still fail somewhere. Each is run, not only looked up, so a missing library
# fails too.
uses() {
  local bad=0 cmd
  for cmd in \
    "containerd --version" "ctr --version" "containerd-shim-runc-v2 -v" \
    "runc --version" "crun --version" "iptables --version" "ip -V" \
    "env CNI_COMMAND=VERSION /usr/lib/cni/bridge" "env CNI_COMMAND=VERSION /usr/lib/cni/host-local" \
    "env CNI_COMMAND=VERSION /usr/lib/cni/loopback" "env CNI_COMMAND=VERSION /usr/lib/cni/portmap" \
    "umoci --version" "jq --version" "curl --version" "pgrep --version" "/usr/bin/kill --version" \
    "nsenter --version" "flock --version" "systemd-analyze --version" "etcd --version" \
    "etcdctl version" "protoc --version" "cc --version" "python3 -m venv --help"; do
    if ! $cmd >/dev/null 2>&1; then
      echo "used by the tests or scripts but not working here: $cmd"
      bad=1
    fi
  done
  # The test images need the static busybox (no libc inside them).
  if ! file_is_static /bin/busybox; then
    echo "used by the tests or scripts but not working here: a static /bin/busybox"
    bad=1
  fi
  return $bad
}
file_is_static() { [[ -x $1 ]] && ! ldd "$1" >/dev/null 2>&1; }
step uses uses
echo done >/logs/current
STEPS

bind=(
  "mount --bind '$REPO' '$root/src/berth' && mount -o remount,bind,ro '$root/src/berth'"
  "mount --bind '$logs' '$root/logs'"
  "mount --bind '$CACHE/apt-archives' '$root/var/cache/apt/archives'"
  "mount --bind '$cargo_home' '$root/root/.cargo'"
)
mkdir -p "$root/src/berth" "$root/logs" "$root/root/.cargo" "$root/var/cache/apt/archives"
path=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
if [[ -n $rustup_home ]]; then
  mkdir -p "$root/root/.rustup"
  bind+=("mount --bind '$rustup_home' '$root/root/.rustup' && mount -o remount,bind,ro '$root/root/.rustup'")
else
  mkdir -p "$root/opt/rust"
  bind+=("mount --bind '$sysroot' '$root/opt/rust' && mount -o remount,bind,ro '$root/opt/rust'")
  path=/opt/rust/bin:$path
fi
mounts=$(printf '%s && ' "${bind[@]}")

say "toolchain: $toolchain_desc"
say "root: $root (logs in $logs)"
status=0
# --kill-child: if this script dies (kill -9 too), the namespace's first process
# gets SIGKILL, and with it every process of the PID namespace.
unshare --mount --pid --fork --kill-child --propagation private -- /bin/bash -c "
  set -e
  $mounts true
  mount -t proc proc '$root/proc'
  mount --rbind /dev '$root/dev'
  mount --rbind /sys '$root/sys'
  mount -t tmpfs tmpfs '$root/tmp'
  exec chroot '$root' /usr/bin/env -i HOME=/root PATH='$path' LANG=C.UTF-8 TERM=dumb \
    CARGO_HOME=/root/.cargo RUSTUP_HOME=/root/.rustup DEBIAN_FRONTEND=noninteractive \
    BERTH_SETUP_DROP_PACKAGE='$drop' BERTH_IMAGES_DIR=/var/tmp/berth-images ${net_env[*]@Q} \
    /bin/bash /fresh-host-steps.sh $mode
" || status=$?

elapsed=$(($(date +%s) - started))
if ((status == 0)) && [[ $(cat "$logs/current" 2>/dev/null) == done ]]; then
  say "passed in ${elapsed} s ($mode): every step above worked on a minimal Debian $SUITE root with only the Rust toolchain added"
  exit 0
fi

# --- what went wrong ------------------------------------------------------------------
step=$(cat "$logs/current" 2>/dev/null || echo "(before the first step)")
log=$logs/$step.log
echo >&2
echo "fresh-host.sh: FAILED at step '$step' after ${elapsed} s (a fresh Debian $SUITE host with only a Rust toolchain)" >&2
if [[ -f $log ]]; then
  # Known failures, named after the package that cures them.
  hints=(
    'linker `cc` not found|error occurred in cc-rs|failed to find tool "cc"|gcc.*not found|: cc: not found'
    'a C compiler and linker (package gcc; libc6-dev for the headers and crt files)'
    'stdio.h: No such file|stdlib.h: No such file|cannot find crt1.o|cannot find -lc\b|crti.o: No such file'
    'the C library headers and start files (package libc6-dev)'
    'google/protobuf/[a-z_]+\.proto: File not found'
    "protoc's well-known .proto files (package libprotobuf-dev)"
    'Could not find `protoc`|protoc.*No such file|failed to invoke protoc'
    'protoc (package protobuf-compiler)'
    'pkg-config.*(not found|No such file)|Could not run `"pkg-config"'
    'pkg-config (package pkg-config)'
  )
  for ((i = 0; i < ${#hints[@]}; i += 2)); do
    if grep -qE -- "${hints[i]}" "$log"; then
      echo "fresh-host.sh: missing: ${hints[i + 1]}; add it to the package list in integration/setup.sh" >&2
    fi
  done
  grep -E '^used by the tests or scripts but not working here' "$log" \
    | sed 's/^/fresh-host.sh: /; s/$/ (its package is missing from integration\/setup.sh)/' >&2 || true
  # setup.sh names the missing file and its package itself.
  grep -E '^setup\.sh: error:' "$log" | sed 's/^/fresh-host.sh: /' >&2 || true
  echo "--- last 40 lines of $step.log ---" >&2
  tail -n 40 "$log" >&2
  echo "--- (whole log: rerun with --keep and read $log) ---" >&2
fi
exit 1
