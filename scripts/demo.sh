#!/usr/bin/env bash
# The demo: NATS, the Discord simulator, ingest, an HTTP sink and a local receiver in one
# process, printing each event as it arrives. With DISCORD_TOKEN set it connects to real
# Discord instead of the simulator. Arguments go to `relaycord dev` (e.g. --events 5000).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
export PATH="$PATH:/usr/sbin"
cargo build --release --locked -p relaycord
exec target/release/relaycord dev "$@"
