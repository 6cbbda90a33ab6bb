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
from kubernetes_validate.utils import latest_version

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "relaycord"
VALUES = Path(__file__).resolve().parent / "values"
VALUES_FILES = sorted(p.name for p in VALUES.glob("*.yaml"))
# Kubernetes versions: the oldest the issue asks for and the newest schema shipped.
KUBE_VERSIONS = ["1.29.0", latest_version()]
# Kinds of the Prometheus Operator: no schema covers them; checked by assertions below.
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}

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


@pytest.fixture(scope="module", params=VALUES_FILES)
def rendered(request) -> tuple[str, dict, list[dict]]:
    values = load_values(request.param)
    return request.param, values, render(values)


def test_the_suite_has_its_values_files():
    assert {"minimal.yaml", "full.yaml", "three-sinks.yaml"} <= set(VALUES_FILES)


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
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            assert container[probe]["httpGet"] == {"path": path, "port": "metrics"}, where


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
    assert 'metrics_listen = "0.0.0.0:9100"' in cm["data"]["relaycord.toml"]
    assert pod["containers"][0]["ports"][0]["containerPort"] == 9100
    assert not [d for d in of_kind(objects, "Deployment") if "sink" in d["metadata"]["name"]]


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
        "Ingress", "HorizontalPodAutoscaler", "ServiceMonitor", "PodMonitor", "PrometheusRule",
        "NetworkPolicy", "Secret", "PodDisruptionBudget", "ServiceAccount",
    } <= kinds
    (ingress,) = of_kind(objects, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "relaycord-tls", "hosts": ["relaycord.example.com"]}]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "relaycord.example.com"
    assert rule["http"]["paths"][0]["path"] == "/interactions"
    assert rule["http"]["paths"][0]["backend"]["service"]["name"] == "rc-relaycord-interactions"
    services = {s["metadata"]["name"]: s for s in of_kind(objects, "Service")}
    assert {p["name"] for p in services["rc-relaycord-interactions"]["spec"]["ports"]} == {"http", "metrics"}
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
    (cm,) = [c for c in of_kind(objects, "ConfigMap") if "relaycord.toml" in c["data"]]
    assert 'tls_ca_file = "/etc/relaycord/nats-tls/ca.crt"' in cm["data"]["relaycord.toml"]
    assert "max_bytes = 10737418240" in cm["data"]["relaycord.toml"]


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
    parser must read back exactly the values' config, integers as integers."""
    _, values, objects = rendered
    (cm,) = [c for c in of_kind(objects, "ConfigMap") if "relaycord.toml" in c["data"]]
    parsed = tomllib.loads(cm["data"]["relaycord.toml"])
    with helm.Chart.load(CHART) as chart:
        config = chart.merge_values(values)["config"]
    for section, keys in config.items():
        for key, value in keys.items():
            assert parsed[section][key] == value, (section, key)
            assert type(parsed[section][key]) is type(value), (section, key)
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
    (cm,) = [c for c in of_kind(objects, "ConfigMap") if "relaycord.toml" in c["data"]]
    # The NATS TLS files the pods mount from a Secret: stand-ins at a path of our own.
    mounts = tmp_path / "etc"
    for sub in ("nats-tls", "nats-creds"):
        (mounts / sub).mkdir(parents=True)
        for name in ("ca.crt", "tls.crt", "tls.key", "nats.creds"):
            (mounts / sub / name).write_text("stand-in\n")
    checked = 0
    for deployment, container in containers(objects):
        pod = deployment["spec"]["template"]["spec"]
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
    assert checked == len(of_kind(objects, "Deployment")) > 0


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
    ],
    ids=[
        "sink-without-name", "sink-replicas-two", "ingest-replicas-two", "sink-secret-inline",
        "nats-password-inline", "tracing-ratio-over-one", "tracing-endpoint-not-a-url",
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
