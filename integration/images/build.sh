#!/usr/bin/env bash
# Build berth's test images locally, with no registry: an OCI image
# layout made by umoci around the static busybox, packed as an OCI archive
# (a tar of the layout) that `ctr -n k8s.io images import` accepts.
#
#   build.sh <out-dir>
#   build.sh --grpc-health <binary> <out-dir>
#
# Produces in <out-dir>:
#   busybox-1.36.tar  -> imports as localhost/berth/busybox:1.36  (cmd: sh)
#   pause-3.9.tar     -> imports as localhost/berth/pause:3.9     (sleeps until TERM/INT, exits 0)
# or, with --grpc-health, only:
#   grpc-health-1.tar -> imports as localhost/berth/grpc-health:1
#                        (busybox plus <binary>, the cargo-built berth-grpc-health, as
#                        /bin/berth-grpc-health with the shared libraries `ldd` lists;
#                        cmd: berth-grpc-health, grpc.health.v1 on port 9000)
#
# The gRPC image is not built by setup.sh: its binary comes from the cargo build,
# which runs after setup. The test harness builds it on demand
# (berth_integration::grpc_health_image), and rebuilds it when the binary, its
# libraries or RECIPE change.
#
# Naming: `ctr images import` (containerd 1.6) names an image after the
# `io.containerd.image.name` annotation of its index.json entry when present;
# `org.opencontainers.image.ref.name` alone ("1.36") would need --base-name.
# We set both, so a plain `ctr images import <tar>` gives the exact names.
#
# Each tar is rebuilt only when missing or when RECIPE below changes (the gRPC
# image also when its binary or libraries change).
set -euo pipefail

# Bump when the recipe changes, so existing tars get rebuilt.
RECIPE=3

usage="usage: build.sh <out-dir> | build.sh --grpc-health <binary> <out-dir>"
grpc_bin=
if [[ ${1:-} == --grpc-health ]]; then
  grpc_bin=${2:?$usage}
  shift 2
  [[ -x $grpc_bin ]] || { echo "build.sh: $grpc_bin is not an executable (build it: cargo build -p berth-integration --bin berth-grpc-health)" >&2; exit 1; }
fi
out=${1:?$usage}
mkdir -p "$out"
out=$(cd "$out" && pwd)

busybox_bin=
for c in /bin/busybox /usr/bin/busybox; do
  if [[ -x $c ]]; then busybox_bin=$c; break; fi
done
[[ -n $busybox_bin ]] || { echo "build.sh: no busybox binary (install busybox-static)" >&2; exit 1; }
# The image has no libc, so the busybox we copy must be the static one.
if command -v ldd >/dev/null && ldd "$busybox_bin" >/dev/null 2>&1; then
  echo "build.sh: $busybox_bin is dynamically linked; install busybox-static" >&2
  exit 1
fi
command -v umoci >/dev/null || { echo "build.sh: umoci not found" >&2; exit 1; }
command -v jq >/dev/null || { echo "build.sh: jq not found" >&2; exit 1; }

# populate_rootfs <rootfs> <applet>...: /bin/busybox plus symlinks; a minimal /etc.
populate_rootfs() {
  local rootfs=$1; shift
  mkdir -p "$rootfs"/{bin,etc,tmp,proc,sys,dev,root,var/run}
  chmod 1777 "$rootfs/tmp"
  cp "$busybox_bin" "$rootfs/bin/busybox"
  chmod 0755 "$rootfs/bin/busybox"
  local applet
  for applet in "$@"; do
    [[ $applet == busybox ]] && continue
    ln -sf busybox "$rootfs/bin/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$rootfs/etc/group"
}

# add_binary <binary> <name> <rootfs>: <binary> as /bin/<name>, with the shared
# libraries and the dynamic loader `ldd` lists, each at its own path (the
# loader finds them in its default directories; there is no ld.so.cache).
add_binary() {
  local bin=$1 name=$2 rootfs=$3 lib
  install -m 0755 "$bin" "$rootfs/bin/$name"
  while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done < <(binary_libs "$bin")
}

# binary_libs <binary>: the absolute paths of the shared objects it loads
# (`libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, `/lib64/ld-linux-x86-64.so.2 (0x...)`;
# the vDSO has no file).
binary_libs() {
  ldd "$1" | awk '$2 == "=>" && $3 ~ /^\// {print $3; next} $1 ~ /^\// {print $1}'
}

# STAMP: what a tar was built from; it is rebuilt when this changes.
STAMP=$RECIPE
# EXTRA_POPULATE: a command run with the rootfs as its last argument, after
# populate_rootfs (the gRPC image adds its binary).
EXTRA_POPULATE=()

# build_image <name> <tag> <tar> <populate-fn-args...> -- <umoci config args...>
build_image() {
  local ref=$1 tag=$2 tar=$3; shift 3
  local stamp="$tar.recipe"
  if [[ -f $tar && -f $stamp && $(cat "$stamp") == "$STAMP" ]]; then
    echo "==> image $ref:$tag: up to date ($tar)"
    return 0
  fi
  echo "==> image $ref:$tag: building $tar"
  local work
  work=$(mktemp -d "${TMPDIR:-/tmp}/berth-img.XXXXXX")
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" RETURN

  local applets=() config=()
  while [[ $# -gt 0 && $1 != -- ]]; do applets+=("$1"); shift; done
  [[ ${1:-} == -- ]] && shift
  config=("$@")

  umoci init --layout "$work/oci"
  umoci new --image "$work/oci:$tag"
  umoci unpack --image "$work/oci:$tag" "$work/bundle" >/dev/null
  populate_rootfs "$work/bundle/rootfs" "${applets[@]}"
  if (( ${#EXTRA_POPULATE[@]} )); then
    "${EXTRA_POPULATE[@]}" "$work/bundle/rootfs"
  fi
  umoci repack --image "$work/oci:$tag" "$work/bundle"
  umoci config --image "$work/oci:$tag" \
    --author "berth integration/images/build.sh" \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.workingdir / \
    "${config[@]}"
  umoci gc --layout "$work/oci"

  # Name the image for `ctr images import` (see the header).
  local idx="$work/oci/index.json"
  jq --arg name "$ref:$tag" --arg tag "$tag" \
    '.manifests |= map(.annotations = ((.annotations // {}) + {"io.containerd.image.name": $name, "org.opencontainers.image.ref.name": $tag}))' \
    "$idx" >"$idx.new"
  mv "$idx.new" "$idx"
  local n
  n=$(jq '.manifests | length' "$idx")
  [[ $n == 1 ]] || { echo "build.sh: expected 1 manifest in $idx, found $n" >&2; return 1; }

  tar -C "$work/oci" --numeric-owner --owner=0 --group=0 -cf "$tar.tmp" .
  mv "$tar.tmp" "$tar"
  echo "$STAMP" >"$stamp"
  echo "==> image $ref:$tag: built $tar ($(du -h "$tar" | cut -f1))"
}

mapfile -t all_applets < <("$busybox_bin" --list)

if [[ -n $grpc_bin ]]; then
  # Test processes build this on demand, possibly several at once: one at a
  # time, and the others then find it up to date.
  exec 9>"$out/grpc-health.lock"
  flock 9
  grpc_libs=$(binary_libs "$grpc_bin")
  [[ -n $grpc_libs ]] || { echo "build.sh: ldd lists no libraries for $grpc_bin" >&2; exit 1; }
  # The binary and every library it loads, by content.
  # shellcheck disable=SC2086
  STAMP="$RECIPE grpc-health $(sha256sum "$grpc_bin" $grpc_libs | awk '{print $1}' | sha256sum | cut -d' ' -f1)"
  EXTRA_POPULATE=(add_binary "$grpc_bin" berth-grpc-health)
  build_image localhost/berth/grpc-health 1 "$out/grpc-health-1.tar" \
    "${all_applets[@]}" -- \
    --clear=config.entrypoint --config.cmd berth-grpc-health \
    --config.exposedports 9000/tcp
  exit 0
fi

build_image localhost/berth/busybox 1.36 "$out/busybox-1.36.tar" \
  "${all_applets[@]}" -- \
  --clear=config.entrypoint --config.cmd sh

# The sandbox ("pause") image: PID 1 of a pid namespace ignores signals it has
# no handler for, so the trap is what lets StopPodSandbox end it with SIGTERM
# (exit 0) instead of waiting for SIGKILL. `sleep & wait` keeps the shell
# responsive to the signal while it sleeps.
build_image localhost/berth/pause 3.9 "$out/pause-3.9.tar" \
  sh sleep -- \
  --clear=config.cmd \
  --config.entrypoint /bin/sh --config.entrypoint -c \
  --config.entrypoint 'trap "exit 0" TERM INT; while :; do sleep 3600 & wait $!; done'
