#!/usr/bin/env bash
# Runs sluice's whole test suite on a fresh machine: installs what the tests need (Debian
# packages, as root), then builds and runs every test once.
#   ./tests/run-all.sh            # everything
#   ./tests/run-all.sh integrity  # only tests whose name contains "integrity" (cargo filter;
#                                 # skips the benchmark smoke test)
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests use as real peers or tools. Installed only when missing.
# The benchmark smoke test (bench/run.sh --quick, below) runs HAProxy, nginx stream, wrk,
# iperf3 and nftables in network namespaces. The package and image checks (below) use
# dpkg-dev (dpkg-shlibdeps for the package's dependencies), binutils, podman and runc.
# tests/metrics.rs parses /metrics with the Prometheus Python client.
PACKAGES=(iproute2 nginx haproxy nftables systemd libnginx-mod-stream wrk iperf3 curl python3
          dpkg-dev binutils podman runc python3-prometheus-client)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "warning: missing packages ${missing[*]} (run as root to install them)" >&2
  fi
fi

# The suite opens a few thousand sockets per process; it needs more than the usual 1024.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# Everything once (unit tests, simulations, benches' tests and the integration tests) with the
# io_uring driver, then the integration tests again with epoll, so that both drivers pass the
# same suite. Where the kernel has io_uring disabled, everything runs once with epoll.
if [ "$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 0)" != 0 ]; then
  echo "=== SKIPPED: integration tests with --driver uring (kernel.io_uring_disabled is set) ==="
  echo "=== all tests with --driver epoll ==="
  SLUICE_TEST_DRIVER=epoll cargo test --profile ci --all-targets "$@"
else
  echo "=== all tests with --driver uring ==="
  SLUICE_TEST_DRIVER=uring cargo test --profile ci --all-targets "$@"
  echo "=== integration tests with --driver epoll ==="
  SLUICE_TEST_DRIVER=epoll cargo test --profile ci --tests "$@"
fi

# Fuzz smoke test: every cargo-fuzz target (fuzz/README.md) for 10 s on its seed corpus; any
# crash, or a target that no longer builds, fails the run. Built unoptimised (`--dev`): the
# instrumented release build of every dependency costs ~10 min of CPU, the dev build a
# fraction of it, and 10 s is about finding breakage, not bugs (the long runs are in
# fuzz/README.md). Needs the nightly toolchain; cargo-fuzz is installed when missing.
# SLUICE_FUZZ_SMOKE=0 skips it.
if [ $# -eq 0 ] && [ "${SLUICE_FUZZ_SMOKE:-1}" = 1 ]; then
  if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    if ! cargo fuzz --version >/dev/null 2>&1; then
      echo "installing cargo-fuzz"
      cargo install cargo-fuzz --locked
    fi
    for target in decode roundtrip config control_request k8s_objects manifests; do
      echo "=== fuzz smoke: $target (10 s) ==="
      FUZZ_CARGO_ARGS=--dev fuzz/run.sh "$target" -max_total_time=10
    done
  else
    echo "=== SKIPPED: fuzz smoke test (no nightly toolchain; see fuzz/README.md) ===" >&2
  fi
fi

# Benchmark smoke test: every load balancer of the suite must serve every workload without
# errors (it never fails on performance numbers). Hard bound 3 minutes; needs root for network
# namespaces. Uses the binary the tests just built (ci profile: debug assertions on).
if [ $# -eq 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    [ -x target/ci/sluice ] || cargo build --profile ci --bin sluice
    timeout --kill-after=15 300 bench/run.sh --quick --sluice target/ci/sluice --out target/bench-quick
  else
    echo "skipping the benchmark smoke test (bench/run.sh --quick needs root)" >&2
  fi
fi

# Shipping: the Debian package (built, installed with dpkg, units verified, purged) and the
# container image (built without a registry, contents checked, run with podman where it can
# start containers). Needs root; the release build is the longest part (~5 min on 2 cores).
if [ $# -eq 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "=== Debian package ==="
    timeout --kill-after=15 1500 tests/package.sh
    echo "=== container image ==="
    timeout --kill-after=15 300 tests/image.sh target/release/sluice
  else
    echo "skipping the package and image checks (they install packages: run as root)" >&2
  fi
fi
