#!/usr/bin/env bash
# Builds the OCI image localhost/sluice:VERSION without contacting a registry, and saves
# it as target/image/sluice-VERSION.oci.tar (`podman load` / `ctr -n k8s.io images import`).
#   deploy/image/build.sh [BINARY]     # default: target/release/sluice (build it first)
# The image is FROM scratch: the binary (debug sections moved to
# target/image/sluice-VERSION.debug), exactly the shared libraries `ldd` names for it
# (with their paths), /etc/passwd and /etc/group for the non-root user 65532, and the
# directories sluice uses (/run/sluice for the control socket, /etc/sluice for settings).
# Needs podman (or buildah) and binutils.
set -euo pipefail
cd "$(dirname "$0")/../.."

bin=${1:-target/release/sluice}
[ -x "$bin" ] || { echo "build.sh: $bin: not an executable (cargo build --release first)" >&2; exit 1; }
version=$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)
tag=localhost/sluice:$version
ctx=target/image
rootfs=$ctx/rootfs

rm -rf "$ctx"
mkdir -p "$ctx"
objcopy --only-keep-debug "$bin" "$ctx/sluice-$version.debug"
mkdir -p "$rootfs/usr/bin" "$rootfs/etc/sluice" "$rootfs/run" "$rootfs/tmp" "$ctx/control"
# Without the line tables (a quarter of the size), with the symbol table: profilers name
# functions in the container. The line tables go beside the archive, found by build id.
objcopy --strip-debug "$bin" "$rootfs/usr/bin/sluice"
chmod 0755 "$rootfs/usr/bin/sluice"
# The loader and every library, at the path the binary (or the loader) looks for it.
ldd "$bin" | awk '/=> \// {print $3} /^\t\/[^ ]+ \(/ {print $1}' | sort -u | while read -r lib; do
  mkdir -p "$rootfs$(dirname "$lib")"
  cp -L "$lib" "$rootfs$lib"
done
echo "root:x:0:0:root:/:/usr/sbin/nologin" >"$rootfs/etc/passwd"
echo "sluice:x:65532:65532:sluice:/nonexistent:/usr/sbin/nologin" >>"$rootfs/etc/passwd"
printf 'root:x:0:\nsluice:x:65532:\n' >"$rootfs/etc/group"
# /run/sluice, the control socket's directory, is the user's (COPY --chown in Containerfile).
chmod 1777 "$rootfs/tmp"
cp deploy/image/Containerfile "$ctx/Containerfile"

if command -v podman >/dev/null; then
  podman build --pull=never --label "org.opencontainers.image.version=$version" -t "$tag" -f "$ctx/Containerfile" "$ctx"
  podman save --format oci-archive -o "$ctx/sluice-$version.oci.tar" "$tag"
elif command -v buildah >/dev/null; then
  buildah bud --pull=never --label "org.opencontainers.image.version=$version" -t "$tag" -f "$ctx/Containerfile" "$ctx"
  buildah push "$tag" "oci-archive:$ctx/sluice-$version.oci.tar:$tag"
else
  echo "build.sh: needs podman or buildah (apt-get install podman)" >&2
  exit 1
fi
echo "built $tag: $ctx/sluice-$version.oci.tar"
