#!/usr/bin/env bash
# The benchmarks (not part of the test suite): each prints its figures next to a baseline
# measured in the same run. Results are recorded in docs/benchmarks.md.
#   scripts/bench.sh            all of them (about 20 minutes on 2 cores, after the build)
#   scripts/bench.sh ingest     one or more of: ingest sinks interactions shards traces
#                               http-sink latency discordhooks
#   scripts/bench.sh scoreboard the CPU-per-event and memory-per-shard figures of issue 23's
#                               scoreboard (docs/benchmarks.md): ingest interactions shards
#                               http-sink discordhooks
# The last three (the gateway → HTTP path, relaycord-bench) run every process as a child on
# 127.0.0.1 and end with a summary table; their options: relaycord-bench <name> --help.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --tests --bench
export PATH="$PATH:/usr/sbin"
export NATS_SERVER_BIN="${NATS_SERVER_BIN:-/usr/sbin/nats-server}"
echo "nats-server: $("$NATS_SERVER_BIN" --version); commit $(git rev-parse --short HEAD)" >&2

cargo build --release --locked -p relaycord -p relaycord-bench
which=("${@:-ingest sinks interactions shards traces http-sink latency discordhooks}")
if [ "${which[*]}" = scoreboard ]; then
    which=(ingest interactions shards http-sink discordhooks)
fi
for bench in ${which[*]}; do
    echo "== $bench" >&2
    case "$bench" in
        ingest | sinks | interactions | traces)
            cargo test --release --locked -p relaycord --test it "${bench}_bench" -- --ignored --nocapture --test-threads 1 2>&1 \
                | grep -v '^running\|^test result\|^$'
            ;;
        shards)
            target/release/relaycord-bench shards --shards 100,1000
            ;;
        http-sink)
            target/release/relaycord-bench http-sink --events 30000 --rounds 3
            ;;
        latency)
            target/release/relaycord-bench latency --rates 1000,10000 --seconds 20
            ;;
        discordhooks)
            # The baseline's dependencies, exactly as locked in its package-lock.json.
            (cd bench/discordhooks && npm ci --no-audit --no-fund --silent)
            target/release/relaycord-bench vs-discordhooks --events 30000 --rounds 3
            ;;
        *)
            echo "unknown benchmark $bench (ingest sinks interactions shards traces http-sink latency discordhooks)" >&2
            exit 2
            ;;
    esac
done
