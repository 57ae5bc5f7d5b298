#!/usr/bin/env bash
# Builds the Debian package: target/debian/sluice_VERSION-1_ARCH.deb and its
# sluice-dbgsym_VERSION-1_ARCH.ddeb (the line tables, for profilers and debuggers).
#   deploy/deb/build.sh            # release build, man pages, completions, cargo deb
# Needs cargo-deb (`cargo install cargo-deb --locked`) and binutils (objcopy, strip).
set -euo pipefail
cd "$(dirname "$0")/../.."

cargo build --release --locked --bin sluice
bin=target/release/sluice

# Generated from the command line's own definitions (clap_mangen, clap_complete).
rm -rf target/assets
mkdir -p target/assets/man target/assets/completions
"$bin" man target/assets/man
gzip -9n target/assets/man/*.1
"$bin" completions bash >target/assets/completions/sluice
"$bin" completions zsh >target/assets/completions/_sluice
"$bin" completions fish >target/assets/completions/sluice.fish

cargo deb --no-build --locked
ls -l target/debian/
