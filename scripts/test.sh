#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and end-to-end tests.
# Installs what it needs first (scripts/setup.sh). Tests start their own nats-server
# processes on free loopback ports; nothing leaves 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --tests
export PATH="$PATH:/usr/sbin"
# A failing test's message, not pages of backtrace: CI keeps only part of the output, and
# a backtrace pushes the message out of it. This overrides RUST_BACKTRACE from the caller's
# environment; RELAYCORD_TEST_BACKTRACE=1 brings backtraces back.
export RUST_BACKTRACE="${RELAYCORD_TEST_BACKTRACE:-0}"

echo "== cargo fmt --check" >&2
cargo fmt --all --check
echo "== cargo clippy" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings
# Two nats-server generations: Debian's 2.9 (no multi-filter consumers) and a current
# release; features of 2.10+ are detected at run time, so the end-to-end suite runs on both.
nats_old=/usr/sbin/nats-server
nats_current="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/nats-server"
for bin in "$nats_old" "$nats_current"; do
    [ -x "$bin" ] || { echo "missing $bin: run scripts/setup.sh --tests" >&2; exit 1; }
done

# Both runs include the bus contract's tests (tests/it/contract.rs): the committed
# docs/contract/ files against the code, @asyncapi/parser over `relaycord asyncapi`, live
# envelopes against the schema, and the three subscriber examples of examples/subscribers/.
echo "== cargo test ($("$nats_old" --version))" >&2
NATS_SERVER_BIN="$nats_old" cargo test --workspace --locked
echo "== end-to-end tests again ($("$nats_current" --version))" >&2
NATS_SERVER_BIN="$nats_current" cargo test -p relaycord --locked --test it
# Dashboards and alerts (grafana/, docs/observability.md): type-checked against Grafana's
# schema, promtool, the chart's copies, and a real Prometheus scraping real processes.
echo "== dashboards and alerts" >&2
tests/deploy/typecheck_dashboards.sh
tests/deploy/check_alerts.sh
python3 tests/deploy/test_grafana_copies.py
python3 tests/deploy/test_dashboard_queries.py
cargo build -p relaycord --locked
NATS_SERVER_BIN="$nats_old" python3 tests/deploy/test_dashboards.py
# Transport compression: the default build above runs tests/it/compression.rs over
# zstd-stream; these two builds run it again over zlib-stream and uncompressed.
echo "== cargo test (zlib-stream build)" >&2
cargo test -p relaycord --locked --no-default-features --features zlib --test it compression::
echo "== cargo test (uncompressed build)" >&2
cargo test -p relaycord --locked --no-default-features --test it compression::

# The Helm chart (tests/deploy): rendered offline by Helm's own engine, every manifest
# validated against Kubernetes' schemas (the oldest version the chart claims and the
# newest), each rendered config checked by this build's binary.
echo "== helm chart (tests/deploy)" >&2
cargo build -p relaycord --locked
python3 -m pytest -q tests/deploy/test_chart.py
# The chart's README: its values table is generated from values.schema.json and values.yaml.
python3 tests/deploy/chart_readme.py --check

# The release (.github/workflows/release.yml, Dockerfile): actionlint, and the workflow's
# own version step run against the chart's defaults.
echo "== release workflow and image" >&2
tests/deploy/check_workflows.sh
python3 -m pytest -q tests/deploy/test_release.py
