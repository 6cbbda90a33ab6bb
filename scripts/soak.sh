#!/usr/bin/env bash
# The full soak (docs/reliability.md): a 3-node JetStream cluster, every Relaycord role as
# a release-built process, the simulator as Discord, and a fault schedule drawn from a seed
# (kill -9, NATS node kills, SIGSTOP pauses, receiver outages, gateway reconnects and
# invalid sessions) while 1,000,000 events flow; then every event is counted at every sink.
# Exit status 1 if anything is lost. Not part of scripts/test.sh (its light run is).
#
#   scripts/soak.sh                          # 1,000,000 events, >= 50 faults of every kind
#   scripts/soak.sh --seed 42                # replay the fault schedule of seed 42
#   scripts/soak.sh --events 100000 --min-faults-per-kind 10 --json /tmp/soak.json
#   NATS_SERVER_BIN=/path/to/nats-server scripts/soak.sh   # the other server generation
#
# Any option of `relaycord-bench soak --help` can be passed.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin"
cargo build --release --locked -p relaycord -p relaycord-bench
exec target/release/relaycord-bench --relaycord target/release/relaycord soak "$@"
