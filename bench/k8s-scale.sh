#!/bin/sh
# Kubernetes watch at scale: `sluice run --kubernetes` against the fake API server of the
# test suite (tests/common/fake_api.rs) with N Services × 10 endpoints (default 10,000).
# Prints BENCH lines: start-up to the last NodePort serving, RSS, time from one API event
# (and from the last event of a burst touching every Service) to the snapshot serving it,
# and the data-plane cost per connection at 1 vs N Services. Loopback only; ~30 s at 10,000 with the default table.
#
#   bench/k8s-scale.sh [SERVICES] [MAGLEV_TABLE_SIZE]
#
# 1 worker (RLIMIT_NOFILE: one listener per NodePort per worker) and a small Maglev table
# by default (10,000 × 65,537 entries: ~1.5 GiB RSS, 26 s start-up); results: docs/benchmarks.md.
set -eu
cd "$(dirname "$0")/.."
SLUICE_BENCH_SERVICES="${1:-10000}" SLUICE_BENCH_MAGLEV="${2:-1009}" RUST_LOG="${RUST_LOG:-warn}" \
  cargo test --profile ci --test kubernetes -- --ignored --exact scale_services_bench --nocapture 2>&1 \
  | grep -E -A3 "^BENCH|test result|panicked"
