"""The release pipeline (.github/workflows/release.yml) and the image (Dockerfile), checked
offline: what the workflow publishes is what the chart pulls by default, for both
architectures, with OCI labels; the chart goes to the same registry as an OCI artifact;
the base images are pinned by digest. actionlint checks the workflow's syntax and
expressions (tests/deploy/check_workflows.sh); this runs the workflow's own version step.

Run: python3 -m pytest -q tests/deploy/test_release.py
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"
DOCKERFILE = ROOT / "Dockerfile"
CHART = yaml.safe_load((ROOT / "helm" / "relaycord" / "Chart.yaml").read_text())
VALUES = yaml.safe_load((ROOT / "helm" / "relaycord" / "values.yaml").read_text())
# The project's GitHub repository, as the chart names it (home: https://github.com/OWNER/REPO).
REPOSITORY = re.fullmatch(r"https://github\.com/([^/]+/[^/]+)", CHART["home"])[1]


@pytest.fixture(scope="module")
def workflow() -> dict:
    text = WORKFLOW.read_text()
    # YAML 1.1 reads the key `on` as True.
    return {("on" if k is True else k): v for k, v in yaml.safe_load(text).items()}


def steps(job: dict) -> list[dict]:
    return job["steps"]


def uses(job: dict, action: str) -> list[dict]:
    return [s for s in steps(job) if s.get("uses", "").split("@")[0] == action]


def run_version_step(workflow: dict, ref_name: str, repository: str, tmp_path: Path) -> tuple[int, dict, str]:
    """Runs the `version` job's script as Actions would (bash -e, GITHUB_* variables)."""
    (step,) = [s for s in steps(workflow["jobs"]["version"]) if s.get("id") == "version"]
    output = tmp_path / "output"
    output.write_text("")
    env = {
        "PATH": os.environ["PATH"],
        "GITHUB_REF_NAME": ref_name,
        "GITHUB_REPOSITORY": repository,
        "GITHUB_REPOSITORY_OWNER": repository.split("/")[0],
        "GITHUB_OUTPUT": str(output),
        **workflow["env"],
    }
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step["run"]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
    )
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines() if "=" in line)
    return result.returncode, outputs, result.stdout + result.stderr


def test_it_runs_on_version_tags_only(workflow):
    assert set(workflow["on"]) == {"push"}
    assert set(workflow["on"]["push"]) == {"tags"}
    assert all(t.startswith("v") for t in workflow["on"]["push"]["tags"])
    # Read-only by default; only the jobs that push may write packages.
    assert workflow["permissions"] == {"contents": "read"}
    for name, job in workflow["jobs"].items():
        writes = job.get("permissions", {}).get("packages") == "write"
        pushes = name in {"image", "manifest", "chart"}
        assert writes == pushes, name


def test_the_published_image_is_the_charts_default(workflow, tmp_path):
    code, outputs, log = run_version_step(workflow, f"v{CHART['appVersion']}", REPOSITORY, tmp_path)
    assert code == 0, log
    assert outputs["version"] == CHART["appVersion"] == CHART["version"]
    assert outputs["image"] == VALUES["image"]["repository"]
    assert VALUES["image"]["tag"] == ""  # so the default tag is appVersion, the released one
    assert outputs["charts"] == f"ghcr.io/{REPOSITORY.split('/')[0].lower()}/charts"
    assert "warning" not in log
    # A fork publishes under its own name (lower case, as registries want) and is told
    # that the chart's default points elsewhere.
    code, outputs, log = run_version_step(workflow, f"v{CHART['appVersion']}", "SomeOne/Relaycord-Fork", tmp_path)
    assert code == 0 and outputs["image"] == "ghcr.io/someone/relaycord-fork", log
    assert "::warning::" in log


def test_a_tag_that_is_not_the_charts_version_is_refused(workflow, tmp_path):
    code, outputs, log = run_version_step(workflow, "v99.0.0", REPOSITORY, tmp_path)
    assert code != 0 and "version" not in outputs
    assert "::error::tag v99.0.0" in log


def test_the_image_is_built_for_amd64_and_arm64_with_oci_labels(workflow):
    job = workflow["jobs"]["image"]
    platforms = {entry["platform"] for entry in job["strategy"]["matrix"]["include"]}
    assert platforms == {"linux/amd64", "linux/arm64"}
    (meta,) = uses(job, "docker/metadata-action")
    labels = dict(line.split("=", 1) for line in meta["with"]["labels"].strip().splitlines())
    assert {"org.opencontainers.image.title", "org.opencontainers.image.licenses"} <= set(labels)
    (build,) = uses(job, "docker/build-push-action")
    assert build["with"]["platforms"] == "${{ matrix.platform }}"
    assert build["with"]["labels"] == "${{ steps.meta.outputs.labels }}"
    assert "push=true" in build["with"]["outputs"] and "push-by-digest=true" in build["with"]["outputs"]
    assert "${{ needs.version.outputs.image }}" in build["with"]["outputs"]
    (login,) = uses(job, "docker/login-action")
    assert login["with"]["registry"] == "${{ env.REGISTRY }}" and workflow["env"]["REGISTRY"] == "ghcr.io"
    # The index joins the per-architecture digests and tags it with the version.
    manifest = workflow["jobs"]["manifest"]
    assert set(manifest["needs"]) == {"version", "image"}
    (tags,) = uses(manifest, "docker/metadata-action")
    assert "type=semver,pattern={{version}}" in tags["with"]["tags"]
    script = "\n".join(s.get("run", "") for s in steps(manifest))
    assert "imagetools create" in script and "linux/amd64,linux/arm64" in script


def test_the_chart_is_pushed_as_an_oci_artifact_after_the_image(workflow):
    job = workflow["jobs"]["chart"]
    assert "manifest" in job["needs"]
    script = "\n".join(s.get("run", "") for s in steps(job))
    assert "helm package helm/relaycord" in script
    assert re.search(r'helm push "\$RUNNER_TEMP/chart/relaycord-\$VERSION\.tgz" "oci://\$CHARTS"', script)


def test_every_action_is_pinned_to_a_release():
    for action in re.findall(r"uses:\s*(\S+)", WORKFLOW.read_text()):
        name, _, ref = action.partition("@")
        assert re.fullmatch(r"v\d+(\.\d+)*|[0-9a-f]{40}", ref), action


def test_the_dockerfile_pins_its_base_images_by_digest():
    froms = re.findall(r"^FROM\s+(\S+)", DOCKERFILE.read_text(), re.M)
    assert len(froms) == 2
    for image in froms:
        assert re.fullmatch(r"[a-z0-9.\-/]+:[\w.\-]+@sha256:[0-9a-f]{64}", image), image


def test_the_dockerfile_names_the_ca_bundle_its_clients_read():
    text = DOCKERFILE.read_text()
    assert "/etc/ssl/certs/ca-certificates.crt" in text
    # The runtime stage is distroless cc, which ships Debian's CA bundle there; a static or
    # scratch base would not have it.
    runtime = re.findall(r"^FROM\s+(\S+)", text, re.M)[-1]
    assert runtime.startswith("gcr.io/distroless/cc-debian12:nonroot@")
    assert "built-in roots" not in text
    assert 'org.opencontainers.image.source="https://github.com/%s"' % REPOSITORY in text
