"""The Helm chart (helm/relaycord), rendered offline by Helm's own engine (helm-python-sdk
bundles Helm v4's Go SDK), every manifest validated strictly with kubernetes-validate, and
the rendered config files checked by the real `relaycord config check`.

Run: python3 -m pytest tests/deploy (scripts/test.sh does, after building the binary).
RELAYCORD_BIN overrides the binary (default target/debug/relaycord).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions, latest_version

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "relaycord"
VALUES = Path(__file__).resolve().parent / "values"
VALUES_FILES = sorted(p.name for p in VALUES.glob("*.yaml"))


def oldest_kubernetes() -> str:
    """The least version Chart.yaml's kubeVersion admits (">=1.27.0-0" gives "1.27.0")."""
    constraint = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    match = re.fullmatch(r">=\s*v?(\d+)\.(\d+)(?:\.(\d+))?(?:-0)?", constraint.strip())
    assert match, f"kubeVersion {constraint!r} is not a plain lower bound"
    return f"{match[1]}.{match[2]}.{match[3] or 0}"


# Kubernetes versions: the oldest the chart claims (kubeVersion) and the newest schema shipped.
KUBE_VERSIONS = [oldest_kubernetes(), latest_version()]
# Kinds of the Prometheus Operator and KEDA: no schema covers them; checked by assertions below.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ScaledObject"}

# What the existing Secrets the values files name would hold. Values are chosen so
# that none of them can appear in a ConfigMap by accident.
EXISTING_SECRETS = {
    ("discord", "token"): "existing-bot-token-MUST-NOT-LEAK",
    ("nats-auth", "password"): "987654",  # digits: must reach relaycord as a string
    ("hooks", "orders-secret"): "whsec_c2VjcmV0LW9yZGVycy1ob29rLWtleQ==",
    ("hooks", "orders-api-key"): "orders-api-key-MUST-NOT-LEAK",
    ("rabbit", "url"): "amqp://relay:rabbit-pass-MUST-NOT-LEAK@rabbitmq:5672/%2f",
}


def load_values(name: str) -> dict:
    return yaml.safe_load((VALUES / name).read_text()) or {}


def render(values: dict, chart: Path = CHART) -> list[dict]:
    """Every object the chart renders (NOTES.txt and empty documents left out)."""
    with helm.Chart.load(chart) as loaded:
        manifests = loaded.render(values, name="rc", namespace="relay")
    objects = []
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def containers(objects: list[dict]) -> list[tuple[dict, dict]]:
    """(Deployment, container) pairs."""
    return [
        (d, c) for d in of_kind(objects, "Deployment") for c in d["spec"]["template"]["spec"]["containers"]
    ]


def pod_spec(obj: dict) -> dict:
    """The pod spec of a Deployment, or a Pod's own."""
    return obj["spec"]["template"]["spec"] if obj["kind"] == "Deployment" else obj["spec"]


def config_map(objects: list[dict]) -> dict:
    (cm,) = [c for c in of_kind(objects, "ConfigMap") if "ingest.toml" in c["data"]]
    return cm


def by_name(objects: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in of_kind(objects, kind)}


@pytest.fixture(scope="module", params=VALUES_FILES)
def rendered(request) -> tuple[str, dict, list[dict]]:
    values = load_values(request.param)
    return request.param, values, render(values)


def test_the_suite_has_its_values_files():
    assert {"minimal.yaml", "full.yaml", "three-sinks.yaml", "keda-podmonitor.yaml"} <= set(VALUES_FILES)


def test_schemas_exist_for_the_oldest_and_newest_kubernetes():
    """kubernetes-validate ships schemas from 1.25 on: the chart's oldest claimed version
    must be one of them, or its manifests would go unchecked there."""
    versions = all_versions()
    assert KUBE_VERSIONS[0] in versions, (KUBE_VERSIONS[0], versions)
    assert KUBE_VERSIONS[0] != KUBE_VERSIONS[1]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_lint_accepts_the_claimed_kubernetes_versions(kube_version):
    report = helm.lint(CHART, load_values("full.yaml"), strict=True, namespace="relay", kube_version=kube_version)
    assert not report["errors"] and not [m for m in report["messages"] if m["severity"] >= 2], report


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_lint_strict_has_no_errors(values_file):
    report = helm.lint(CHART, load_values(values_file), strict=True, namespace="relay")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_manifest_validates_strictly(rendered, kube_version):
    _, _, objects = rendered
    assert objects
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} on {kube_version}: {e.message} at {list(e.path)}")


def test_secure_defaults(rendered):
    _, _, objects = rendered
    pairs = containers(objects)
    assert pairs
    for deployment, container in pairs:
        pod = deployment["spec"]["template"]["spec"]
        where = deployment["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["automountServiceAccountToken"] is False, where
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["capabilities"]["drop"] == ["ALL"], where
        assert "add" not in sc["capabilities"], where
        assert container["resources"]["requests"]["cpu"], where
        assert container["resources"]["requests"]["memory"], where
        assert container["resources"]["limits"]["memory"], where
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert "metrics" in ports, where
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, where
            # Kubernetes' default timeout is 1 s: a busy pod would fail its probes.
            assert container[probe]["timeoutSeconds"] >= 2, where
        # The startup probe gives a slow start its own budget before liveness can kill it.
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 60, where


def test_ingest_deployment_pdb_and_grace():
    objects = render(load_values("minimal.yaml"))
    (ingest,) = [d for d in of_kind(objects, "Deployment") if d["metadata"]["name"] == "rc-relaycord-ingest"]
    pod = ingest["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["ingest"]
    # The drain on SIGTERM waits up to 10 s for acks before saving and closing.
    assert pod["terminationGracePeriodSeconds"] > 10
    (pdb,) = of_kind(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == ingest["spec"]["selector"]["matchLabels"]
    # ingest.metrics_listen in the rendered config is the port the probes use.
    (cm,) = of_kind(objects, "ConfigMap")
    assert 'metrics_listen = "0.0.0.0:9100"' in cm["data"]["ingest.toml"]
    assert pod["containers"][0]["ports"][0]["containerPort"] == 9100
    assert not [d for d in of_kind(objects, "Deployment") if "sink" in d["metadata"]["name"]]


def test_ingest_worker_threads_reach_only_the_ingest_container():
    def worker_env(values: dict) -> dict[str, str | None]:
        return {
            d["metadata"]["name"]: {v["name"]: v.get("value") for v in c["env"]}.get("TOKIO_WORKER_THREADS")
            for d, c in containers(render(values))
        }

    # Unset: the binary's own default (one worker for ingest, one per core elsewhere).
    assert set(worker_env(load_values("minimal.yaml")).values()) == {None}
    values = load_values("minimal.yaml")
    values.setdefault("ingest", {})["workerThreads"] = 2
    values["sinks"] = [{"name": "a", "type": "http", "config": {"url": "http://receiver.relay:8080/"}}]
    env = worker_env(values)
    assert env.pop("rc-relaycord-ingest") == "2"
    assert env and set(env.values()) == {None}, env


def interactions_grace(values: dict) -> int:
    (deployment,) = [d for d in of_kind(render(values), "Deployment") if d["metadata"]["name"] == "rc-relaycord-interactions"]
    return deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


def test_the_interactions_grace_period_covers_the_drain():
    """Issue 20 point 3: on SIGTERM the pod serves on for drain_delay, then gives requests in
    flight shutdown_grace; Kubernetes must not kill it before (SIGKILL drops them)."""
    defaults = load_values("full.yaml")
    for key in ["drain_delay", "shutdown_grace"]:
        del defaults["config"]["interactions"][key]
    assert "terminationGracePeriodSeconds" not in defaults["interactions"]
    # The binary's defaults: drain_delay 5 s, shutdown_grace 10 s, and 5 s for the rest.
    assert interactions_grace(defaults) >= 5 + 10 + 5
    # full.yaml sets both: 10 s + 15 s, and the default 30 s just covers them.
    full = load_values("full.yaml")
    assert (full["config"]["interactions"]["drain_delay"], full["config"]["interactions"]["shutdown_grace"]) == ("10s", "15s")
    assert interactions_grace(full) == 30

    def with_config(drain: str, grace: str, seconds: int) -> dict:
        edited = load_values("full.yaml")
        edited["config"]["interactions"].update(drain_delay=drain, shutdown_grace=grace)
        edited["interactions"]["terminationGracePeriodSeconds"] = seconds
        return edited

    # Durations as relaycord reads them (humantime), rounded up to whole seconds.
    assert interactions_grace(with_config("1m 30s", "10s", 105)) == 105
    assert interactions_grace(with_config("500ms", "2min", 126)) == 126
    with pytest.raises(helm.HelmError, match="set it to at least 126"):
        render(with_config("500ms", "2min", 125))
    with pytest.raises(helm.HelmError, match="terminationGracePeriodSeconds = 30 is too short"):
        render(with_config("20s", "10s", 30))
    for bad in ["5", "5 parsecs", "soon"]:
        with pytest.raises(helm.HelmError, match="config.interactions.drain_delay"):
            render(with_config(bad, "10s", 60))


def test_one_deployment_per_sink_with_its_own_settings():
    values = load_values("three-sinks.yaml")
    objects = render(values)
    sinks = {d["metadata"]["labels"].get("relaycord.dev/sink"): d for d in of_kind(objects, "Deployment")}
    sinks.pop(None)  # ingest
    assert sorted(sinks) == sorted(s["name"] for s in values["sinks"])
    for entry in values["sinks"]:
        deployment = sinks[entry["name"]]
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["args"][:3] == ["sink", "--name", entry["name"]]
        volume = deployment["spec"]["template"]["spec"]["volumes"][0]
        assert volume["configMap"]["items"][0]["key"] == f"sink-{entry['name']}.toml"
        if entry.get("autoscaling", {}).get("enabled"):
            assert "replicas" not in deployment["spec"]
        else:
            assert deployment["spec"]["replicas"] == entry.get("replicas", 1)
    orders = sinks["orders-webhook"]["spec"]["template"]["spec"]["containers"][0]
    assert orders["resources"]["requests"]["cpu"] == "200m"
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(objects, "HorizontalPodAutoscaler")}
    assert set(hpas) == {"rc-relaycord-sink-audit-queue"}
    assert hpas["rc-relaycord-sink-audit-queue"]["spec"]["maxReplicas"] == 6
    # A sink's pods get its own secrets only.
    env = {e["name"] for e in orders["env"]}
    assert {"RELAYCORD_SINKS__0__SECRET", "RELAYCORD_SINKS__0__HEADERS__X-API-KEY"} <= env
    audit = sinks["audit-queue"]["spec"]["template"]["spec"]["containers"][0]
    assert "RELAYCORD_SINKS__0__SECRET" not in {e["name"] for e in audit["env"]}
    # The discord sink posting as the bot gets the bot token; the others do not.
    modlog = sinks["mod-log"]["spec"]["template"]["spec"]["containers"][0]
    assert "DISCORD_TOKEN" in {e["name"] for e in modlog["env"]}
    assert "DISCORD_TOKEN" not in env


def test_everything_on_renders_every_optional_object():
    objects = render(load_values("full.yaml"))
    kinds = {o["kind"] for o in objects}
    assert {
        "Ingress", "HorizontalPodAutoscaler", "ServiceMonitor", "PrometheusRule",
        "NetworkPolicy", "Secret", "PodDisruptionBudget", "ServiceAccount", "Pod",
    } <= kinds
    assert "PodMonitor" in {o["kind"] for o in render(load_values("keda-podmonitor.yaml"))}
    (ingress,) = of_kind(objects, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "relaycord-tls", "hosts": ["relaycord.example.com"]}]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "relaycord.example.com"
    # Discord's two URLs: the interactions endpoint and the webhook events one.
    assert [p["path"] for p in rule["http"]["paths"]] == ["/interactions", "/webhook-events"]
    for path in rule["http"]["paths"]:
        assert path["backend"]["service"]["name"] == "rc-relaycord-interactions"
    services = {s["metadata"]["name"]: s for s in of_kind(objects, "Service")}
    # What the ingress exposes is the interactions port only; metrics have a Service of their own.
    assert [p["name"] for p in services["rc-relaycord-interactions"]["spec"]["ports"]] == ["http"]
    assert "relaycord.dev/metrics" not in services["rc-relaycord-interactions"]["metadata"]["labels"]
    metrics_service = services["rc-relaycord-interactions-metrics"]
    assert [p["name"] for p in metrics_service["spec"]["ports"]] == ["metrics"]
    assert metrics_service["spec"]["clusterIP"] == "None"
    assert metrics_service["spec"]["type"] == "ClusterIP"
    for monitor in of_kind(objects, "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        scraped = [s for s in services.values() if selector.items() <= s["metadata"]["labels"].items()]
        # ingest, interactions and the one sink, each by its port named "metrics".
        assert len(scraped) == 3, scraped
        assert all("metrics" in {p["name"] for p in s["spec"]["ports"]} for s in scraped)
        assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    for monitor in of_kind(objects, "PodMonitor"):
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    # The bus's URL and TLS files reach the config; the secrets only the environment.
    cm = config_map(objects)
    assert 'tls_ca_file = "/etc/relaycord/nats-tls/ca.crt"' in cm["data"]["ingest.toml"]
    assert "max_bytes = 10737418240" in cm["data"]["ingest.toml"]


def test_tracing_sets_the_standard_variables_on_every_container_and_is_off_by_default():
    for _, container in containers(render(load_values("minimal.yaml"))):
        assert not [v for v in container["env"] if v["name"].startswith("OTEL_")], container["name"]
    traced = containers(render(load_values("full.yaml")))
    assert traced
    for _, container in traced:
        env = {v["name"]: v.get("value") for v in container["env"]}
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.monitoring:4318"
        assert env["OTEL_TRACES_SAMPLER"] == "parentbased_traceidratio"
        assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.05"
        assert env["OTEL_RESOURCE_ATTRIBUTES"] == (
            "k8s.namespace.name=relay,deployment.environment=prod"
        )
        assert env["TZ"] == "UTC"


def test_the_config_file_is_the_values_config_as_toml(rendered):
    """The chart writes TOML itself (Helm's toToml turns 256 into 256.0); an independent
    parser must read back exactly the values' config, integers as integers. Each role's
    file holds the sections that role reads and no other."""
    _, values, objects = rendered
    cm = config_map(objects)
    with helm.Chart.load(CHART) as chart:
        config = chart.merge_values(values)["config"]
    files = {"ingest.toml": {"interactions"}, "interactions.toml": {"ingest"}}
    files |= {f"sink-{e['name']}.toml": {"ingest", "interactions"} for e in values.get("sinks", [])}
    assert set(cm["data"]) == set(files)
    for name, left_out in files.items():
        parsed = tomllib.loads(cm["data"][name])
        for section, keys in config.items():
            if section in left_out:
                assert section not in parsed, (name, section)
                continue
            for key, value in keys.items():
                assert parsed[section][key] == value, (name, section, key)
                assert type(parsed[section][key]) is type(value), (name, section, key)
        if not name.startswith("sink-"):
            assert "sinks" not in parsed
    for entry in values.get("sinks", []):
        sink = tomllib.loads(cm["data"][f"sink-{entry['name']}.toml"])["sinks"]
        assert sink == [{"name": entry["name"], "type": entry["type"], **entry.get("config", {})}]


def test_dashboards_and_alert_rules_ship_as_written(tmp_path):
    objects = render(load_values("full.yaml"))
    files = sorted((CHART / "files" / "dashboards").glob("*.json"))
    dashboards = [c for c in of_kind(objects, "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert len(dashboards) == len(files)
    shipped = {k: v for c in dashboards for k, v in c["data"].items()}
    assert shipped == {f.name: f.read_text().rstrip("\n") for f in files}
    (rule,) = of_kind(objects, "PrometheusRule")
    source = yaml.safe_load((CHART / "files" / "alerts" / "relaycord.rules.yml").read_text())
    assert rule["spec"]["groups"] == source["groups"]
    assert "{{ $labels" in yaml.safe_dump(rule["spec"]["groups"])
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # Zero dashboards render no ConfigMap; several render one each.
    copy = tmp_path / "relaycord"
    shutil.copytree(CHART, copy)
    (copy / "files" / "dashboards").mkdir(parents=True, exist_ok=True)
    for f in (copy / "files" / "dashboards").glob("*.json"):
        f.unlink()
    assert not [c for c in of_kind(render(load_values("full.yaml"), copy), "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    for name in ("a_one.json", "b-two.json", "c.three.json"):
        (copy / "files" / "dashboards" / name).write_text('{"title": "%s", "panels": []}\n' % name)
    several = [c for c in of_kind(render(load_values("full.yaml"), copy), "ConfigMap") if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    assert len(several) == 3 and len({c["metadata"]["name"] for c in several}) == 3


def secret_store(objects: list[dict]) -> dict[tuple[str, str], str]:
    """The existing Secrets the values name, plus the one the chart renders."""
    store = dict(EXISTING_SECRETS)
    for secret in of_kind(objects, "Secret"):
        for key, value in secret.get("stringData", {}).items():
            store[(secret["metadata"]["name"], key)] = value
    return store


def test_no_secret_value_in_any_configmap(rendered):
    _, _, objects = rendered
    store = secret_store(objects)
    configmaps = "\n".join(
        v for c in of_kind(objects, "ConfigMap") for v in c["data"].values()
    )
    for (name, key), value in store.items():
        assert value not in configmaps, f"{name}/{key} is in a ConfigMap"
    for deployment, container in containers(objects):
        for env in container["env"]:
            if re.search(r"TOKEN|PASSWORD|SEED|SECRET|HEADERS|PUBLIC_KEY|SINKS__0__URL", env["name"]):
                assert "valueFrom" in env and "secretKeyRef" in env["valueFrom"], (deployment["metadata"]["name"], env)


@pytest.fixture(scope="module")
def relaycord_bin() -> Path:
    path = Path(os.environ.get("RELAYCORD_BIN", ROOT / "target" / "debug" / "relaycord"))
    if not path.is_file():
        pytest.fail(f"{path} is missing: build it with `cargo build -p relaycord`")
    return path


def test_relaycord_accepts_every_rendered_config(rendered, relaycord_bin, tmp_path):
    """Each Deployment's own config file and environment, as its pod would get them,
    passes `relaycord config check`."""
    _, _, objects = rendered
    store = secret_store(objects)
    cm = config_map(objects)
    # The NATS TLS files the pods mount from a Secret: stand-ins at a path of our own.
    mounts = tmp_path / "etc"
    for sub in ("nats-tls", "nats-creds"):
        (mounts / sub).mkdir(parents=True)
        for name in ("ca.crt", "tls.crt", "tls.key", "nats.creds"):
            (mounts / sub / name).write_text("stand-in\n")
    checked = 0
    # Every Deployment's container, and the `helm test` pod's.
    pairs = containers(objects) + [(p, c) for p in of_kind(objects, "Pod") for c in p["spec"]["containers"]]
    for deployment, container in pairs:
        pod = pod_spec(deployment)
        (config_volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
        key = config_volume["configMap"]["items"][0]["key"]
        text = cm["data"][key].replace("/etc/relaycord/", f"{mounts}/")
        config = tmp_path / f"{deployment['metadata']['name']}.toml"
        config.write_text(text)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        for var in container["env"]:
            if "value" in var:
                env[var["name"]] = var["value"]
            else:
                ref = var["valueFrom"]["secretKeyRef"]
                env[var["name"]] = store[(ref["name"], ref["key"])]
        env["RELAYCORD_CONFIG"] = str(config)
        result = subprocess.run(
            [str(relaycord_bin), "config", "check"], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, (deployment["metadata"]["name"], text, result.stderr)
        checked += 1
    assert checked == len(of_kind(objects, "Deployment")) + len(of_kind(objects, "Pod")) > 0


@pytest.mark.parametrize(
    "bad",
    [
        {"sinks": [{"type": "http", "config": {"url": "https://x.example"}}]},
        {"sinks": [{"name": "a", "type": "http", "replicas": "two"}]},
        {"ingest": {"replicas": "two"}},
        {"sinks": [{"name": "a", "type": "http", "config": {"secret": "whsec_inline"}}]},
        {"config": {"nats": {"password": "inline"}}},
        {"tracing": {"endpoint": "http://collector:4318", "sampleRatio": 2}},
        {"tracing": {"endpoint": "collector:4318"}},
        {"metrics": {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True}}},
        {"sinks": [{"name": "a", "type": "http", "autoscaling": {"enabled": True}, "keda": {"enabled": True}}]},
        {"sinkDefaults": {"autoscaling": {"enabled": True}, "keda": {"enabled": True}}},
        {"sinks": [{"name": "a" * 41, "type": "http"}]},
        {"ingest": {"pdb": {"enabled": True, "unhealthyPodEvictionPolicy": "Sometimes"}}},
        {"probes": {"startup": {"timeoutSeconds": 0}}},
        {"ingest": {"workerThreads": 0}},
        {"ingest": {"workerThreads": "two"}},
    ],
    ids=[
        "sink-without-name", "sink-replicas-two", "ingest-replicas-two", "sink-secret-inline",
        "nats-password-inline", "tracing-ratio-over-one", "tracing-endpoint-not-a-url",
        "service-and-pod-monitor", "sink-hpa-and-keda", "sink-defaults-hpa-and-keda",
        "sink-name-over-40", "pdb-policy-unknown", "probe-timeout-zero",
        "ingest-worker-threads-zero", "ingest-worker-threads-not-a-number",
    ],
)
def test_bad_values_are_refused_by_the_schema(bad):
    values = load_values("minimal.yaml") | bad
    with helm.Chart.load(CHART) as chart:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(values)
    with pytest.raises(helm.HelmError):
        render(values)
    report = helm.lint(CHART, values, strict=True)
    assert report["errors"] or [m for m in report["messages"] if m["severity"] == 3], report


def test_a_broken_template_fails_render_and_lint(tmp_path):
    copy = tmp_path / "relaycord"
    shutil.copytree(CHART, copy)
    template = copy / "templates" / "sinks.yaml"
    source = template.read_text()
    # Drop the last `end`: the range is never closed.
    broken = source[: source.rindex("{{- end }}")]
    assert broken != source
    template.write_text(broken)
    with pytest.raises(helm.HelmError):
        render(load_values("three-sinks.yaml"), copy)
    report = helm.lint(copy, load_values("three-sinks.yaml"), strict=True)
    assert report["errors"] or [m for m in report["messages"] if m["severity"] == 3], report


# --- Scaling and rollouts -----------------------------------------------------------------


def test_keda_scaled_object_per_sink_on_its_consumer_lag():
    """KEDA's CRD is not in the Kubernetes schemas: its documented fields are asserted here
    (keda.sh/docs/scalers/nats-jetstream: every trigger metadata value is a string)."""
    values = load_values("keda-podmonitor.yaml")
    objects = render(values)
    deployments = by_name(objects, "Deployment")
    scaled = by_name(objects, "ScaledObject")
    assert set(scaled) == {"rc-relaycord-sink-orders", "rc-relaycord-sink-audit"}
    for name, obj in scaled.items():
        assert obj["apiVersion"] == "keda.sh/v1alpha1"
        spec = obj["spec"]
        assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        # KEDA owns the replica count: the Deployment must not fight it on every upgrade.
        assert "replicas" not in deployments[name]["spec"]
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "nats-jetstream"
        meta = trigger["metadata"]
        assert set(meta) == {
            "natsServerMonitoringEndpoint", "account", "stream", "consumer", "lagThreshold",
            "activationLagThreshold", "useHttps",
        }
        assert all(isinstance(v, str) for v in meta.values()), meta
        sink = deployments[name]["metadata"]["labels"]["relaycord.dev/sink"]
        # The sink's durable consumer (crates/sinks: relaycord-<name>).
        assert meta["consumer"] == f"relaycord-{sink}"
        assert spec["minReplicaCount"] <= spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
    orders = scaled["rc-relaycord-sink-orders"]["spec"]
    meta = orders["triggers"][0]["metadata"]
    # From sinkDefaults.keda and the chart's defaults: the stream from subject_prefix
    # acme.bot-2 (crates/bus: ACME_BOT_2_GATEWAY), the endpoint from nats.url's host.
    assert meta == {
        "natsServerMonitoringEndpoint": "nats.messaging.svc:8222", "account": "$G",
        "stream": "ACME_BOT_2_GATEWAY", "consumer": "relaycord-orders", "lagThreshold": "500",
        "activationLagThreshold": "0", "useHttps": "false",
    }
    assert (orders["minReplicaCount"], orders["maxReplicaCount"]) == (1, 8)
    assert orders["fallback"]["replicas"] == 2
    audit = scaled["rc-relaycord-sink-audit"]["spec"]
    assert audit["triggers"][0]["metadata"] | {} == {
        "natsServerMonitoringEndpoint": "nats-monitor.messaging.svc:8222", "account": "BOTS",
        "stream": "CUSTOM_STREAM", "consumer": "relaycord-audit", "lagThreshold": "50",
        "activationLagThreshold": "0", "useHttps": "false",
    }
    assert audit["minReplicaCount"] == 0
    # The sink that keeps the CPU HPA has no ScaledObject; no sink has both.
    hpas = by_name(objects, "HorizontalPodAutoscaler")
    assert set(hpas) == {"rc-relaycord-sink-cpu-scaled"}
    assert not set(hpas) & set(scaled)


def test_keda_and_the_cpu_hpa_together_are_refused_after_merging_sink_defaults():
    """The schema sees each map alone; the template refuses the merged result too."""
    values = load_values("minimal.yaml") | {
        "sinkDefaults": {"autoscaling": {"enabled": True}},
        "sinks": [{"name": "a", "type": "http", "keda": {"enabled": True}, "config": {"url": "https://a.example"}}],
    }
    with pytest.raises(helm.HelmError, match="keda.enabled and autoscaling.enabled are both on"):
        render(values)


def pod_annotations(objects: list[dict]) -> dict[str, dict]:
    return {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"] for d in of_kind(objects, "Deployment")
    }


def test_a_pod_rolls_only_when_its_own_config_or_secret_changes():
    base = load_values("full.yaml")
    base["sinks"] = base["sinks"] + [
        {"name": "other", "type": "http", "config": {"url": "https://other.example"},
         "secretEnv": {"secret": {"key": "other-secret"}}},
    ]
    base["secret"]["data"]["other-secret"] = "whsec_b3RoZXItc2VjcmV0LWtleS12YWx1ZQ=="
    before = pod_annotations(render(base))
    names = set(before)
    assert names == {"rc-relaycord-ingest", "rc-relaycord-interactions", "rc-relaycord-sink-hook", "rc-relaycord-sink-other"}

    def changed(values: dict) -> set[str]:
        after = pod_annotations(render(values))
        return {n for n in names if after[n] != before[n]}

    def edit(fn) -> dict:
        values = yaml.safe_load(yaml.safe_dump(base))
        fn(values)
        return values

    assert changed(edit(lambda v: v["sinks"][1]["config"].update(timeout="30s"))) == {"rc-relaycord-sink-other"}
    assert changed(edit(lambda v: v["secret"]["data"].update({"other-secret": "whsec_bmV3"}))) == {"rc-relaycord-sink-other"}
    assert changed(edit(lambda v: v["config"]["interactions"].update(deadline="2s"))) == {"rc-relaycord-interactions"}
    assert changed(edit(lambda v: v["config"]["ingest"].update(window=256))) == {"rc-relaycord-ingest"}
    assert changed(edit(lambda v: v["secret"]["data"].update({"discord-public-key": "00" * 32}))) == {"rc-relaycord-interactions"}
    # What every role reads rolls every role.
    assert changed(edit(lambda v: v["config"]["nats"].update(max_age="72h"))) == names
    assert changed(edit(lambda v: v["secret"]["data"].update({"nats-token": "rotated"}))) == names


@pytest.mark.parametrize("values_file", ["minimal.yaml", "full.yaml", "three-sinks.yaml", "keda-podmonitor.yaml"])
def test_every_deployment_has_a_pdb_that_lets_unready_pods_go(values_file):
    objects = render(load_values(values_file))
    pdbs = of_kind(objects, "PodDisruptionBudget")
    for deployment in of_kind(objects, "Deployment"):
        selector = deployment["spec"]["selector"]["matchLabels"]
        matching = [p for p in pdbs if p["spec"]["selector"]["matchLabels"] == selector]
        assert len(matching) == 1, deployment["metadata"]["name"]
        assert matching[0]["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        assert matching[0]["spec"]["maxUnavailable"] == 1
    assert len(pdbs) == len(of_kind(objects, "Deployment"))


def test_ingest_and_interactions_spread_over_zones_and_nodes_sinks_on_request():
    objects = render(load_values("full.yaml"))
    for deployment in of_kind(objects, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        if component == "sink":
            assert "topologySpreadConstraints" not in pod
            continue
        constraints = pod["topologySpreadConstraints"]
        assert [c["topologyKey"] for c in constraints] == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
        for c in constraints:
            assert c["whenUnsatisfiable"] == "ScheduleAnyway"
            assert c["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
            assert c["matchLabelKeys"] == ["pod-template-hash"]
    own = [{"maxSkew": 2, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"x": "y"}}}]
    values = load_values("minimal.yaml") | {"ingest": {"topologySpreadConstraints": own}}
    (ingest,) = of_kind(render(values), "Deployment")
    assert ingest["spec"]["template"]["spec"]["topologySpreadConstraints"] == own
    values = load_values("minimal.yaml") | {"ingest": {"topologySpread": {"enabled": False}}}
    (ingest,) = of_kind(render(values), "Deployment")
    assert "topologySpreadConstraints" not in ingest["spec"]["template"]["spec"]


def test_sink_defaults_place_and_annotate_every_sink_unless_it_says_otherwise():
    values = load_values("keda-podmonitor.yaml")
    objects = render(values)
    pods = {
        d["metadata"]["labels"]["relaycord.dev/sink"]: d["spec"]["template"]
        for d in of_kind(objects, "Deployment") if "relaycord.dev/sink" in d["metadata"]["labels"]
    }
    toleration = values["sinkDefaults"]["tolerations"]
    for name in ("orders", "cpu-scaled"):
        assert pods[name]["spec"]["nodeSelector"] == {"pool": "sinks"}
        assert pods[name]["spec"]["tolerations"] == toleration
        assert pods[name]["metadata"]["annotations"]["team"] == "integrations"
    assert pods["audit"]["spec"]["nodeSelector"] == {"pool": "audit"}
    assert pods["audit"]["spec"]["tolerations"] == toleration
    # Annotations are merged: the sink's own beside the defaults'.
    assert pods["audit"]["metadata"]["annotations"]["owner"] == "audit"
    assert pods["audit"]["metadata"]["annotations"]["team"] == "integrations"
    # Ingest keeps the chart-wide placement.
    (ingest,) = [d for d in of_kind(objects, "Deployment") if d["metadata"]["name"] == "rc-relaycord-ingest"]
    assert "nodeSelector" not in ingest["spec"]["template"]["spec"]


# --- Names, Services, NetworkPolicy, helm test -------------------------------------------

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def test_names_fit_in_63_characters_with_the_longest_release_and_sink_names():
    """Helm allows release names up to 53 characters and the schema sink names up to 40:
    every object's name must still be a valid Service name (DNS-1035, <= 63) and unique."""
    release = "r" + "e" * 51 + "x"  # 53
    long_a = "a" * 39 + "1"
    long_b = "a" * 39 + "2"  # differs from long_a in its last character only
    values = load_values("full.yaml")
    values["interactions"]["ingress"]["enabled"] = True
    values["sinks"] = [
        {"name": long_a, "type": "http", "config": {"url": "https://a.example"}, "keda": {"enabled": True}},
        {"name": long_b, "type": "http", "config": {"url": "https://b.example"}, "autoscaling": {"enabled": True}},
    ]
    for extra in ({}, {"nameOverride": "n" * 63}, {"fullnameOverride": "f" * 70}):
        with helm.Chart.load(CHART) as loaded:
            manifests = loaded.render(values | extra, name=release, namespace="relay")
        objects = [d for path, text in manifests.items() if not path.endswith("NOTES.txt")
                   for d in yaml.safe_load_all(text) if d]
        seen: dict[tuple[str, str], int] = {}
        for obj in objects:
            name = obj["metadata"]["name"]
            assert len(name) <= 63 and DNS_1035.match(name), (obj["kind"], name, len(name))
            seen[(obj["kind"], name)] = seen.get((obj["kind"], name), 0) + 1
        assert all(n == 1 for n in seen.values()), [k for k, n in seen.items() if n > 1]
        services = {o["metadata"]["name"] for o in of_kind(objects, "Service")}
        assert len(services) == 5, services  # ingest, interactions (http, metrics), two sinks
        for sink in (long_a, long_b):
            # The sink's name survives whole: only the release's part is cut.
            assert any(s.endswith(f"-sink-{sink}-metrics") for s in services), (sink, services)


def test_the_network_policy_admits_the_monitoring_namespace_and_dns():
    objects = render(load_values("keda-podmonitor.yaml"))
    (policy,) = of_kind(objects, "NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (metrics_rule,) = [r for r in spec["ingress"] if r["ports"][0]["port"] == "metrics"]
    assert metrics_rule["from"] == [
        {"podSelector": {}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}},
         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}},
    ]
    dns = [r for r in spec["egress"] if {"port": 53, "protocol": "UDP"} in r.get("ports", [])]
    assert len(dns) == 1 and {"port": 53, "protocol": "TCP"} in dns[0]["ports"]
    assert dns[0]["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                             "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
    # Without egress rules egress is not restricted, so there is no DNS rule to add.
    values = load_values("minimal.yaml") | {"networkPolicy": {"enabled": True}}
    (policy,) = of_kind(render(values), "NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"] and "egress" not in policy["spec"]
    (metrics_rule,) = policy["spec"]["ingress"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in metrics_rule["from"]
    # metricsFrom replaces both.
    peers = [{"ipBlock": {"cidr": "10.0.0.0/8"}}]
    values = load_values("minimal.yaml") | {"networkPolicy": {"enabled": True, "metricsFrom": peers}}
    (policy,) = of_kind(render(values), "NetworkPolicy")
    assert policy["spec"]["ingress"][0]["from"] == peers


def test_helm_test_hook_runs_the_image_against_nats_with_the_release_config():
    objects = render(load_values("full.yaml"))
    (pod,) = of_kind(objects, "Pod")
    annotations = pod["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "test"
    assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
    (container,) = pod["spec"]["containers"]
    (ingest,) = [d for d in of_kind(objects, "Deployment") if d["metadata"]["name"] == "rc-relaycord-ingest"]
    ingest_container = ingest["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == ingest_container["image"]
    assert container["args"] == ["reshard", "status"]
    assert pod["spec"]["restartPolicy"] == "Never"
    # The same NATS credentials and TLS files as ingest, and not the bot token.
    env = {e["name"] for e in container["env"]}
    assert "RELAYCORD_NATS__TOKEN" in env and "RELAYCORD_DISCORD__TOKEN" not in env
    assert container["volumeMounts"] == ingest_container["volumeMounts"]
    assert not of_kind(render(load_values("full.yaml") | {"tests": {"enabled": False}}), "Pod")
