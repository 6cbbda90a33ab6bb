#!/usr/bin/env bash
# The benchmarks (not part of the test suite): each prints its figures next to a baseline
# measured in the same run. Results are recorded in docs/benchmarks.md.
#   scripts/bench.sh            all of them (about 10 minutes on 2 cores, after the build)
#   scripts/bench.sh ingest     one of: ingest sinks interactions shards traces
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --tests
export PATH="$PATH:/usr/sbin"
export NATS_SERVER_BIN="${NATS_SERVER_BIN:-/usr/sbin/nats-server}"
echo "nats-server: $("$NATS_SERVER_BIN" --version); commit $(git rev-parse --short HEAD)" >&2

cargo build --release --locked -p relaycord -p relaycord-bench
which=("${@:-ingest sinks interactions shards traces}")
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
        *)
            echo "unknown benchmark $bench (ingest sinks interactions shards traces)" >&2
            exit 2
            ;;
    esac
done
