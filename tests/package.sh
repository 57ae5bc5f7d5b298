#!/usr/bin/env bash
# CI check of the Debian package, as root on a Debian machine: builds it
# (deploy/deb/build.sh: release binary, man pages, completions, cargo deb), installs it with
# dpkg, checks what an operator gets — the files, the user, `systemd-analyze verify` on the
# installed units, Documentation= links that resolve to installed files, man pages,
# completions, the dbgsym package matching the binary's build id, `sluice check` on the
# example settings — and purges it again (also on failure).
#   tests/package.sh
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

[ "$(id -u)" -eq 0 ] || { echo "SKIPPED: tests/package.sh installs a package (run as root)"; exit 0; }

# cargo-deb, pinned (the version this was written against); ~1 min to build on 2 cores.
CARGO_DEB_VERSION=3.8.0
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb $CARGO_DEB_VERSION"; then
  start=$(date +%s)
  timeout 900 cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --quiet
  echo "cargo install cargo-deb: $(( $(date +%s) - start )) s"
fi

start=$(date +%s)
deploy/deb/build.sh
echo "deploy/deb/build.sh: $(( $(date +%s) - start )) s"

version=$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)
arch=$(dpkg --print-architecture)
deb=target/debian/sluice_${version}-1_${arch}.deb
ddeb=target/debian/sluice-dbgsym_${version}-1_${arch}.ddeb
[ -f "$deb" ] || fail "$deb was not built"
[ -f "$ddeb" ] || fail "$ddeb was not built"

cleanup() { dpkg --purge sluice sluice-dbgsym >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
dpkg -i "$deb" "$ddeb" >/dev/null || fail "dpkg -i"
pass "dpkg -i $deb $ddeb"

for f in /usr/bin/sluice \
         /usr/lib/systemd/system/sluice.service /usr/lib/systemd/system/sluice-kubernetes.service \
         /usr/lib/sysusers.d/sluice.conf /usr/lib/sysctl.d/99-sluice.conf \
         /usr/share/doc/sluice/operations.md /usr/share/doc/sluice/install-kubernetes.md \
         /usr/share/doc/sluice/examples/transparent.conf /usr/share/doc/sluice/examples/sluice.toml \
         /usr/share/doc/sluice/examples/node.toml \
         /usr/share/man/man1/sluice.1.gz /usr/share/man/man1/sluice-run.1.gz \
         /usr/share/man/man1/sluice-ctl-reload.1.gz \
         /usr/share/bash-completion/completions/sluice /usr/share/zsh/vendor-completions/_sluice \
         /usr/share/fish/vendor_completions.d/sluice.fish; do
  [ -e "$f" ] || fail "$f not installed"
done
pass "files installed"

out=$(/usr/bin/sluice --version)
[ "$out" = "sluice $version" ] || fail "sluice --version printed: $out"
pass "sluice --version: $out"
getent passwd sluice >/dev/null || fail "no sluice user after install"
pass "user sluice: $(getent passwd sluice)"
[ -d /etc/sluice ] || fail "/etc/sluice missing"

# The installed units, as installed (their commands resolve to /usr/bin/sluice).
verify=$(systemd-analyze verify --man=no /usr/lib/systemd/system/sluice.service \
         /usr/lib/systemd/system/sluice-kubernetes.service 2>&1) || fail "systemd-analyze verify: $verify"
if echo "$verify" | grep -v "Failed to connect" | grep -q "sluice"; then
  fail "systemd-analyze verify: $verify"
fi
pass "systemd-analyze verify (installed units)"

# Documentation= names only what the package installed.
for unit in sluice.service sluice-kubernetes.service; do
  for doc in $(sed -n 's/^Documentation=//p' "/usr/lib/systemd/system/$unit"); do
    case "$doc" in
      file://*) [ -f "${doc#file://}" ] || fail "$unit: $doc is not installed" ;;
      man:*) page=${doc#man:}; name=${page%%(*}; section=${page#*(}; section=${section%)}
             [ -f "/usr/share/man/man$section/$name.$section.gz" ] || fail "$unit: $doc is not installed" ;;
      *) fail "$unit: unexpected Documentation=$doc" ;;
    esac
  done
done
pass "Documentation= of both units resolves to installed files"

zcat /usr/share/man/man1/sluice-ctl-endpoints.1.gz | grep -q '^\.TH' || fail "man page sluice-ctl-endpoints"
bash -c 'source /usr/share/bash-completion/completions/sluice && complete -p sluice' >/dev/null \
  || fail "bash completion does not load"
pass "man pages and bash completion"

# The example settings are valid for the unit that uses them.
/usr/bin/sluice check --config /usr/share/doc/sluice/examples/sluice.toml >/dev/null \
  || fail "sluice check on examples/sluice.toml"
/usr/bin/sluice check --kubernetes --config /usr/share/doc/sluice/examples/node.toml \
  --node-name ci >/dev/null || fail "sluice check --kubernetes on examples/node.toml"
pass "sluice check on the example settings"

# The stripped binary's debug info is in the dbgsym package, under its build id.
build_id=$(readelf -n /usr/bin/sluice | sed -n 's/.*Build ID: //p')
[ -n "$build_id" ] || fail "no build id in /usr/bin/sluice"
debug=/usr/lib/debug/.build-id/${build_id:0:2}/${build_id:2}.debug
[ -f "$debug" ] || fail "$debug not installed by the dbgsym package"
readelf -S "$debug" 2>/dev/null | grep -q debug_line || fail "$debug has no line tables"
pass "dbgsym: $debug"

size() { stat -c %s "$1"; }
echo "sizes: target/release/sluice $(size target/release/sluice) B," \
     "installed /usr/bin/sluice $(size /usr/bin/sluice) B, $(basename "$deb") $(size "$deb") B," \
     "$(basename "$ddeb") $(size "$ddeb") B"
echo "package checks passed"
