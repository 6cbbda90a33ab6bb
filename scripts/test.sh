#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and end-to-end tests.
# Installs what it needs first (scripts/setup.sh). Tests start their own nats-server
# processes on free loopback ports; nothing leaves 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --tests
export PATH="$PATH:/usr/sbin"

echo "== cargo fmt --check" >&2
cargo fmt --all --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test" >&2
cargo test --workspace --locked
# Transport compression: the default build above runs tests/it/compression.rs over
# zstd-stream; these two builds run it again over zlib-stream and uncompressed.
echo "== cargo test (zlib-stream build)" >&2
cargo test -p relaycord --locked --no-default-features --features zlib --test it compression::
echo "== cargo test (uncompressed build)" >&2
cargo test -p relaycord --locked --no-default-features --test it compression::
