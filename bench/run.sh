#!/usr/bin/env bash
# sluice benchmark suite: sluice vs HAProxy, nginx stream, kube-proxy-style nftables DNAT and
# no LB ("direct"), TCP and UDP, in network namespaces this script creates and removes itself.
#
#   bench/run.sh                 # full run (3 interleaved repetitions x 6 s; ~33 min on 2 CPUs, ~8 of them UDP)
#   bench/run.sh --quick         # smoke test for CI (1 repetition x 1 s; ~2 min, ~26 s of it UDP)
#   bench/run.sh --only sluice-uring-splice,haproxy-1t --workloads keepalive --scale none
#   bench/run.sh --sluice target/ci/sluice   # use an existing binary, do not build
#
# Root only (namespaces, nftables). Installs missing Debian packages. Results go to
# bench/results/DATE-TIME/ (summary.md, *.svg, runs.json) unless --out DIR is given.
# Exit status: non-zero only when an LB fails to serve or errors (never on performance).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "bench/run.sh must run as root (it creates network namespaces and nftables rules)" >&2
  exit 2
fi

PACKAGES=(iproute2 haproxy nginx libnginx-mod-stream wrk iperf3 nftables conntrack curl python3 gcc libc6-dev)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The Debian packages start their own daemons on install; the suite needs none of them
# (it runs its own instances in its namespaces), and they are not ours to stop otherwise.

build=1
for a in "$@"; do [ "$a" = "--sluice" ] && build=0; done
if [ $build -eq 1 ]; then
  cargo build --release --quiet
fi

ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Safety net: whatever happens to the Python runner (even SIGKILL), remove the namespaces it
# created (named sb<its PID>-*) and every process inside them. Processes in those
# namespaces are ours by construction.
runner=""
alive=0
cleanup() {
  [ -n "$runner" ] || return 0
  if [ $alive -eq 1 ]; then kill -TERM "$runner" 2>/dev/null && wait "$runner" 2>/dev/null || true; fi
  alive=0
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^sb${runner}-" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 bench/suite/run.py "$@" &
runner=$!
alive=1
set +e
wait "$runner"
rc=$?
set -e
alive=0
cleanup
runner=""
exit $rc
