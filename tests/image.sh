#!/usr/bin/env bash
# CI check of the container image, as root: builds it (deploy/image/build.sh, no registry),
# checks its configuration (entrypoint, non-root user, capabilities label) and contents (the
# binary and exactly the libraries `ldd` names, the user's passwd entry, /run/sluice owned
# by it), runs `sluice --version` inside the image's file system (chroot: proves the
# libraries suffice), then — where podman can start containers here — `sluice --version`
# and the demo in a container: the demo's Service answers through the container's own
# network namespace (loopback only) and `sluice ctl status` answers by `podman exec`.
#   tests/image.sh [BINARY]           # default target/release/sluice
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: tests/image.sh needs root (podman, chroot)"; exit 0; }
command -v podman >/dev/null || fail "podman is not installed (tests/run-all.sh installs it)"

bin=${1:-target/release/sluice}
version=$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)
tag=localhost/sluice:$version
container=sluice-image-check-$$

start=$(date +%s)
deploy/image/build.sh "$bin" >/dev/null
echo "deploy/image/build.sh: $(( $(date +%s) - start )) s"

runroot=$(mktemp -d)
cleanup() {
  podman rm -f "$container" >/dev/null 2>&1 || true
  podman rmi -f "$tag" >/dev/null 2>&1 || true
  rm -rf "$runroot"
}
trap cleanup EXIT

# Configuration.
inspect() { podman image inspect --format "$1" "$tag"; }
[ "$(inspect '{{.Config.User}}')" = "65532:65532" ] || fail "user: $(inspect '{{.Config.User}}')"
[ "$(inspect '{{json .Config.Entrypoint}}')" = '["/usr/bin/sluice"]' ] || fail "entrypoint: $(inspect '{{json .Config.Entrypoint}}')"
[ "$(inspect '{{index .Config.Labels "io.containers.capabilities"}}')" = "NET_BIND_SERVICE" ] || fail "capabilities label"
[ "$(inspect '{{index .Config.Labels "org.opencontainers.image.version"}}')" = "$version" ] || fail "version label"
pass "image config: user 65532, entrypoint /usr/bin/sluice, capabilities NET_BIND_SERVICE"

# Contents: unpack the saved OCI archive's layers and compare with what the binary links.
archive=target/image/sluice-$version.oci.tar
[ -f "$archive" ] || fail "$archive missing"
mkdir -p "$runroot/oci" "$runroot/rootfs"
tar -xf "$archive" -C "$runroot/oci"
manifest=$(python3 -c 'import json,sys; i=json.load(open(sys.argv[1]+"/index.json")); print(i["manifests"][0]["digest"].split(":")[1])' "$runroot/oci")
for layer in $(python3 -c 'import json,sys; m=json.load(open(sys.argv[1]+"/blobs/sha256/"+sys.argv[2])); print(" ".join(l["digest"].split(":")[1] for l in m["layers"]))' "$runroot/oci" "$manifest"); do
  tar -xf "$runroot/oci/blobs/sha256/$layer" -C "$runroot/rootfs"
done
files=$(cd "$runroot/rootfs" && find . -type f | sed 's|^\.||' | sort)
want=$( (echo /usr/bin/sluice; echo /etc/passwd; echo /etc/group;
         ldd "$bin" | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}') | sort -u)
[ "$files" = "$want" ] || fail "image files differ from the binary + its libraries:
$(diff <(echo "$want") <(echo "$files") || true)"
grep -q '^sluice:x:65532:65532:' "$runroot/rootfs/etc/passwd" || fail "no passwd entry for 65532"
[ "$(stat -c '%u' "$runroot/rootfs/run/sluice")" = 65532 ] || fail "/run/sluice is not the user's"
pass "image files: $(echo "$files" | tr '\n' ' ')"

out=$(chroot --userspec=65532:65532 "$runroot/rootfs" /usr/bin/sluice --version) || fail "chroot sluice --version"
[ "$out" = "sluice $version" ] || fail "chroot sluice --version printed $out"
pass "sluice --version in the image's file system (chroot, uid 65532): $out"

# A container. This VM's limits: RLIMIT_NOFILE's hard limit cannot be raised and podman
# lowers its own RLIMIT_NPROC to pid_max, so podman's defaults (1048576) fail in setrlimit;
# pass the limits there are. crun refuses this host's hybrid cgroup layout; runc accepts it.
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
pid_max=$(cat /proc/sys/kernel/pid_max)
if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then nproc=$pid_max; fi
runtime=()
command -v runc >/dev/null && runtime=(--runtime runc)
run_opts=("${runtime[@]}" run --network none --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
set +e
out=$(timeout 60 podman "${run_opts[@]}" --rm "$tag" --version 2>&1)
rc=$?
set -e
if [ $rc -eq 125 ] || [ $rc -eq 126 ] || [ $rc -eq 127 ] && ! echo "$out" | grep -q "^sluice "; then
  echo "SKIPPED: podman cannot start containers here (exit $rc): $out"
  echo "image checks passed (contents only)"
  exit 0
fi
[ $rc -eq 0 ] && [ "$out" = "sluice $version" ] || fail "podman run --version (exit $rc): $out"
pass "podman run $tag --version: $out"

# The demo in a container with only a loopback interface; reached through its namespace.
podman "${run_opts[@]}" -d --name "$container" "$tag" demo --workers 1 >/dev/null
pid=$(podman inspect --format '{{.State.Pid}}' "$container")
answer=""
for _ in $(seq 1 100); do
  answer=$(nsenter -t "$pid" -n curl -s --max-time 2 http://127.0.0.1:30000/ 2>/dev/null || true)
  [ -n "$answer" ] && break
  sleep 0.1
done
[ -n "$answer" ] || fail "the demo in the container did not answer: $(podman logs "$container" 2>&1 | tail -20)"
pass "demo in a container answered: $(echo "$answer" | head -1)"
status=$(podman exec "$container" sluice ctl status) || fail "sluice ctl status in the container: $status"
echo "$status" | grep -q "^sluice $version" || fail "ctl status: $status"
pass "podman exec … sluice ctl status: $(echo "$status" | head -1)"
podman stop -t 10 "$container" >/dev/null
echo "image checks passed (contents, chroot, podman run, demo)"
