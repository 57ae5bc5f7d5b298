#!/usr/bin/env bash
# Runs one fuzz target on its corpus (seeded from the test fixtures by seed.sh) with its
# dictionary; extra arguments go to libFuzzer.
#   fuzz/run.sh config -runs=10000000
#   fuzz/run.sh k8s_objects -max_total_time=20
# Uses the nightly toolchain when rustup has one, else the stable one with RUSTC_BOOTSTRAP=1.
# FUZZ_CARGO_ARGS adds options to `cargo fuzz run` (e.g. `--dev` for a quick unoptimised build).
set -euo pipefail
cd "$(dirname "$0")"
target=$1
shift
./seed.sh >/dev/null
case $target in
  config) extra=(-dict=dicts/config.dict -max_len=8192) ;;
  control_request) extra=(-dict=dicts/control.dict -max_len=4096) ;;
  k8s_objects | manifests) extra=(-dict=dicts/k8s.dict -max_len=16384) ;;
  *) extra=() ;;
esac
mkdir -p "corpus/$target"
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  exec cargo +nightly fuzz run ${FUZZ_CARGO_ARGS:-} "$target" "corpus/$target" -- "${extra[@]}" "$@"
else
  RUSTC_BOOTSTRAP=1 exec cargo fuzz run ${FUZZ_CARGO_ARGS:-} "$target" "corpus/$target" -- "${extra[@]}" "$@"
fi
