"""Every Grafana dashboard panel returns data from a real Prometheus scraping real processes.

Starts, all on 127.0.0.1 with free ports and a temp dir: nats-server (JetStream), the
Discord simulator (`relaycord sim`, events at a steady rate), `relaycord ingest`, two
`relaycord sink --name` processes (one receiver accepts, one always answers 500 so events
are retried and dead-lettered), `relaycord interactions` with an HTTP handler that answers
`/fast` in time and `/slow` after the deadline (deferral + late reply), signed interaction
requests (PyNaCl) including forged ones, and Prometheus (Debian's `prometheus`) scraping
the three roles every second. Then, for every dashboard in grafana/dashboards, the query
variables are resolved through Prometheus's API (each must have values), filled into every
panel's queries, and each query must return a series with a number through
/api/v1/query_range.

Run: python3 tests/deploy/test_dashboards.py (RELAYCORD_BIN, NATS_SERVER_BIN and
PROMETHEUS_BIN override the binaries; scripts/test.sh builds relaycord first).
"""

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from nacl.signing import SigningKey

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "grafana" / "dashboards"
# Long enough for a cold start on a loaded 2-core machine; reached only when failing.
PATIENCE = 240
NAMESPACE = "relaycord-test"
# What Grafana puts for $__rate_interval at a 1 s scrape interval is at least 4 scrapes.
RATE_INTERVAL = "10s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{what} did not listen on {port} within {timeout}s")


def binary(env: str, default: str, search_path: bool = True) -> str:
    name = default.rsplit("/", 1)[-1]
    path = os.environ.get(env) or (search_path and shutil.which(name)) or default
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise AssertionError(f"{path} is missing: run scripts/setup.sh --tests (or set {env})")
    return path


class Receiver:
    """A webhook receiver answering every request with `status`."""

    def __init__(self, status: int):
        self.count = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.count += 1
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class InteractionHandler:
    """An HTTP interaction handler: answers /fast at once and /slow after `delay`."""

    def __init__(self, delay: float):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                if self.path == "/slow":
                    time.sleep(delay)
                body = json.dumps({"type": 4, "data": {"content": f"from {self.path}"}}).encode()
                try:
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass  # interactions stopped while the slow reply was pending

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


class Interactions:
    """Sends Discord-signed interactions to the endpoint, as Discord would."""

    def __init__(self, url: str):
        self.url = url
        self.key = SigningKey(os.urandom(32))
        self.public_key = self.key.verify_key.encode().hex()
        self.next_id = 1

    def body(self, kind: int, name: str | None) -> str:
        self.next_id += 1
        body = {
            "application_id": "11", "type": kind, "id": str(1_000_000 + self.next_id),
            "token": f"token-{self.next_id}", "version": 1,
        }
        if name is not None:
            body |= {
                "data": {"type": 1, "name": name, "id": "42"},
                "member": {"user": {"id": "7", "username": "tester"}},
                "guild_id": "290926798626357999", "channel_id": "645027906669510667",
            }
        return json.dumps(body)

    def webhook_event(self) -> int:
        """An APPLICATION_DEAUTHORIZED webhook event, to /webhook-events, as Discord sends it."""
        self.next_id += 1
        body = json.dumps({"version": 1, "application_id": "11", "type": 1, "event": {
            "type": "APPLICATION_DEAUTHORIZED", "timestamp": f"{time.time():.6f}",
            "data": {"user": {"id": str(2_000_000 + self.next_id), "username": "tester"}}}})
        return self.send_body(body, self.url.replace("/interactions", "/webhook-events"))

    def send(self, kind: int, name: str | None = None, forged: bool = False) -> int:
        return self.send_body(self.body(kind, name), self.url, forged)

    def send_body(self, body: str, url: str, forged: bool = False) -> int:
        timestamp = str(int(time.time()))
        signature = self.key.sign((timestamp + body).encode()).signature.hex()
        if forged:
            signature = "00" * 64
        request = urllib.request.Request(url, data=body.encode(), method="POST", headers={
            "content-type": "application/json",
            "x-signature-ed25519": signature,
            "x-signature-timestamp": timestamp,
        })
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status
        except urllib.error.HTTPError as e:
            return e.code


def prom_get(base: str, path: str, params: dict) -> dict:
    url = f"{base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.load(response)
    if answer.get("status") != "success":
        raise AssertionError(f"{url}: {answer}")
    return answer["data"]


def regex_of(values: list[str]) -> str:
    """Grafana's substitution of a multi-value variable into a `=~` matcher."""
    return "(" + "|".join(re.escape(v).replace("\\", "\\\\") for v in values) + ")"


def fill(expr: str, variables: dict[str, str]) -> str:
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", variables[name]).replace(f"${name}", variables[name])
    if "$" in expr:
        raise AssertionError(f"unfilled variable in {expr}")
    return expr


LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.*),\s*(?P<label>\w+)\)$")


def resolve_variables(base: str, dashboard: dict) -> tuple[dict[str, str], list[str]]:
    """Fills the dashboard's variables in order, as Grafana does; returns them and problems."""
    variables, problems = {}, []
    for var in dashboard["templating"]["list"]:
        if var["type"] == "datasource":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = LABEL_VALUES.match(query)
        if not m:
            problems.append(f"variable {var['name']}: not a label_values query: {query}")
            break
        selector = fill(m["selector"], variables)
        series = prom_get(base, "/api/v1/series", {"match[]": selector, "start": time.time() - 600})
        values = sorted({s[m["label"]] for s in series if m["label"] in s})
        if not values:
            # The later variables depend on this one, as in Grafana.
            problems.append(f"variable {var['name']}: {query} has no values")
            break
        variables[var["name"]] = regex_of(values)
    return variables, problems


def panel_problems(base: str, dashboard: dict, variables: dict[str, str], start: float) -> list[str]:
    problems = []
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            expr = fill(target["expr"], variables)
            data = prom_get(base, "/api/v1/query_range", {
                "query": expr, "start": start, "end": time.time(), "step": "1s",
            })
            numbers = [
                float(v) for series in data["result"] for _, v in series["values"]
                if not math.isnan(float(v))
            ]
            if not numbers:
                problems.append(
                    f"{dashboard['uid']} / {panel['title']} / {target['refId']}: "
                    f"no data for {expr}"
                )
    return problems


class DashboardsHaveData(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="relaycord-dashboards-"))
        self.procs: list[tuple[str, subprocess.Popen]] = []
        self.log_files = []

    def tearDown(self):
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for _, proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.log_files:
            log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.dir / f"{name}.log", "wb")
        self.log_files.append(log)
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "RUST_LOG": "warn"})
        self.procs.append((name, proc))
        return proc

    def logs(self) -> str:
        out = []
        for name, proc in self.procs:
            text = (self.dir / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
            out.append(f"--- {name} (exit {proc.poll()})\n" + "\n".join(text))
        return "\n".join(out)

    def test_every_panel_query_returns_data(self):
        relaycord = binary("RELAYCORD_BIN", str(ROOT / "target" / "debug" / "relaycord"), False)
        nats_server = binary("NATS_SERVER_BIN", "/usr/sbin/nats-server")
        prometheus = binary("PROMETHEUS_BIN", "/usr/bin/prometheus")
        port = {name: free_port() for name in (
            "nats", "sim", "ingest", "sink_ok", "sink_failing", "interactions", "interactions_metrics",
            "prometheus")}

        nats = self.spawn("nats", [nats_server, "-a", "127.0.0.1", "-p", str(port["nats"]), "-js",
                                   "-sd", str(self.dir / "nats")])
        wait_port(port["nats"], nats, "nats-server")
        sim = self.spawn("sim", [relaycord, "sim", "--listen", f"127.0.0.1:{port['sim']}",
                                 "--shards", "2", "--rate", "20"])
        wait_port(port["sim"], sim, "relaycord sim")

        ok, failing = Receiver(204), Receiver(500)
        handler = InteractionHandler(delay=1.0)
        interactions = Interactions(f"http://127.0.0.1:{port['interactions']}/interactions")
        config = self.dir / "relaycord.toml"
        config.write_text(f"""
[nats]
url = "nats://127.0.0.1:{port['nats']}"
[discord]
token = "sim-token"
api_base = "http://127.0.0.1:{port['sim']}/api"
public_key = "{interactions.public_key}"
[ingest]
metrics_listen = "127.0.0.1:{port['ingest']}"
lease_ttl = "3s"
[interactions]
listen = "127.0.0.1:{port['interactions']}"
metrics_listen = "127.0.0.1:{port['interactions_metrics']}"
deadline = "300ms"
http_handler_timeout = "10s"
[[interactions.routes]]
command = "fast"
handler = {{ http = "{handler.base}/fast" }}
[[interactions.routes]]
command = "slow"
handler = {{ http = "{handler.base}/slow" }}
[[sinks]]
name = "ok"
type = "http"
url = "{ok.url}"
[[sinks]]
name = "failing"
type = "http"
url = "{failing.url}"
max_attempts = 2
backoff = {{ initial = "50ms", max = "100ms" }}
""")
        base = [relaycord, "--config", str(config)]
        check = subprocess.run([*base, "config", "check"], capture_output=True, text=True)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        roles = {
            "ingest": (self.spawn("ingest", [*base, "ingest"]), port["ingest"]),
            "sink-ok": (self.spawn("sink-ok", [
                *base, "sink", "--name", "ok", "--metrics-listen", f"127.0.0.1:{port['sink_ok']}"]),
                port["sink_ok"]),
            "sink-failing": (self.spawn("sink-failing", [
                *base, "sink", "--name", "failing",
                "--metrics-listen", f"127.0.0.1:{port['sink_failing']}"]), port["sink_failing"]),
            "interactions": (self.spawn("interactions", [*base, "interactions"]),
                             port["interactions_metrics"]),
        }
        for name, (proc, metrics_port) in roles.items():
            wait_port(metrics_port, proc, f"relaycord {name}")
        wait_port(port["interactions"], roles["interactions"][0], "the interactions endpoint")

        targets = {
            "relaycord-ingest": [port["ingest"]],
            "relaycord-sink": [port["sink_ok"], port["sink_failing"]],
            "relaycord-interactions": [port["interactions_metrics"]],
        }
        (self.dir / "prometheus.yml").write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {"job_name": job, "static_configs": [{
                    "targets": [f"127.0.0.1:{p}" for p in ports],
                    # What a Kubernetes ServiceMonitor adds; the dashboards filter by it.
                    "labels": {"namespace": NAMESPACE},
                }]}
                for job, ports in targets.items()
            ],
        }))
        prom = self.spawn("prometheus", [
            prometheus, f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port['prometheus']}",
        ])
        wait_port(port["prometheus"], prom, "prometheus")
        prom_base = f"http://127.0.0.1:{port['prometheus']}"
        start = time.time()

        # Interaction traffic until the check is done: pings, in-time and late handler
        # replies, forged signatures (rejected), and webhook events.
        stop = threading.Event()
        statuses: dict[str, set[int]] = {}

        def traffic():
            while not stop.is_set():
                for label, kind, name, forged in (("ping", 1, None, False), ("fast", 2, "fast", False),
                                                  ("slow", 2, "slow", False), ("forged", 2, "fast", True)):
                    try:
                        statuses.setdefault(label, set()).add(interactions.send(kind, name, forged))
                    except OSError as e:
                        statuses.setdefault(label, set()).add(str(e))
                try:
                    statuses.setdefault("webhook_event", set()).add(interactions.webhook_event())
                except OSError as e:
                    statuses.setdefault("webhook_event", set()).add(str(e))
                stop.wait(0.5)

        sender = threading.Thread(target=traffic, daemon=True)
        sender.start()
        try:
            dashboards = sorted(DASHBOARDS.glob("*.json"))
            self.assertEqual({d.stem for d in dashboards}, {"overview", "ingest", "sinks", "interactions"})
            problems: list[str] = ["not checked yet"]
            deadline = time.monotonic() + PATIENCE
            checked = 0
            while problems and time.monotonic() < deadline:
                time.sleep(2)
                for name, proc in self.procs:
                    self.assertIsNone(proc.poll(), f"{name} exited\n{self.logs()}")
                problems, checked = [], 0
                for path in dashboards:
                    dashboard = json.loads(path.read_text())
                    variables, var_problems = resolve_variables(prom_base, dashboard)
                    problems += var_problems
                    if var_problems:
                        continue
                    problems += panel_problems(prom_base, dashboard, variables, start)
                    checked += sum(len(p["targets"]) for p in dashboard["panels"])
            self.assertEqual(
                problems, [],
                f"after {PATIENCE}s; receivers ok={ok.count} failing={failing.count}; "
                f"interaction statuses {statuses}\n{self.logs()}",
            )
        finally:
            stop.set()
            sender.join(timeout=15)
        # The check can fail: a query for a metric nobody exposes is reported.
        absent = {"uid": "absent", "panels": [{"title": "t", "targets": [
            {"refId": "A", "expr": 'sum(rate(relaycord_no_such_metric{job=~"$job"}[$__rate_interval]))'}]}]}
        self.assertEqual(len(panel_problems(prom_base, absent, {"job": ".*"}, start)), 1)
        self.assertGreater(failing.count, 0)
        self.assertEqual(statuses["ping"], {200})
        self.assertEqual(statuses["forged"], {401})
        print(f"dashboards: {checked} panel queries over {len(dashboards)} dashboards returned data",
              file=sys.stderr)


if __name__ == "__main__":
    unittest.main()
