"""What promtool does not check about grafana/alerts/relaycord.rules.yml:

- every alert has a `for:`, a severity of critical or warning, a summary, a description and
  a runbook_url pointing at a section of docs/runbook.md that exists;
- every alert has a firing and a quiet `promtool test rules` case in grafana/alerts/tests;
- every relaycord_* metric an alert reads is one the code exports (an alert on a misspelt
  or removed metric would never fire).

Run: python3 tests/deploy/check_alert_rules.py (tests/deploy/check_alerts.sh does).
Exit status 1 with one line per problem.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "grafana" / "alerts" / "relaycord.rules.yml"
TESTS = ROOT / "grafana" / "alerts" / "tests"
RUNBOOK = ROOT / "docs" / "runbook.md"
RUNBOOK_URL = "https://github.com/relaycord/relaycord/blob/main/docs/runbook.md#"
SEVERITIES = {"critical", "warning"}


def github_anchor(heading: str) -> str:
    """GitHub's slug of a Markdown heading: lower case, punctuation dropped, spaces to '-'."""
    slug = heading.strip().lower()
    slug = re.sub(r"[^\w\- ]", "", slug)
    return slug.replace(" ", "-")


def runbook_anchors(text: str) -> set[str]:
    return {github_anchor(m[1]) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def exported_metrics() -> set[str]:
    """Every relaycord_* name that appears as a string in the crates' sources."""
    names: set[str] = set()
    for path in (ROOT / "crates").rglob("*.rs"):
        names.update(re.findall(r'"(relaycord_[a-z0-9_]+)"', path.read_text(errors="replace")))
    return names


def problems(rules_text: str, tests: list[dict], runbook: str, metrics: set[str]) -> list[str]:
    found: list[str] = []
    rules = [r for g in yaml.safe_load(rules_text)["groups"] for r in g["rules"] if "alert" in r]
    anchors = runbook_anchors(runbook)
    cases: dict[str, set[str]] = {}
    for test in tests:
        for case in test.get("alert_rule_test", []):
            kind = "firing" if case.get("exp_alerts") else "quiet"
            cases.setdefault(case["alertname"], set()).add(kind)
    for rule in rules:
        name = rule["alert"]
        if not rule.get("for"):
            found.append(f"{name}: no `for:`")
        severity = rule.get("labels", {}).get("severity")
        if severity not in SEVERITIES:
            found.append(f"{name}: severity {severity!r} is not one of {sorted(SEVERITIES)}")
        annotations = rule.get("annotations", {})
        for key in ("summary", "description", "runbook_url"):
            if not annotations.get(key):
                found.append(f"{name}: no {key} annotation")
        url = annotations.get("runbook_url", "")
        if url and not url.startswith(RUNBOOK_URL):
            found.append(f"{name}: runbook_url {url} is not a section of {RUNBOOK_URL}")
        elif url and url[len(RUNBOOK_URL):] not in anchors:
            found.append(f"{name}: docs/runbook.md has no section #{url[len(RUNBOOK_URL):]}")
        for kind in ("firing", "quiet"):
            if kind not in cases.get(name, set()):
                found.append(f"{name}: no {kind} promtool test case")
        for metric in set(re.findall(r"\brelaycord_[a-z0-9_]+", rule["expr"])):
            base = re.sub(r"_(bucket|count|sum)$", "", metric)
            if metric not in metrics and base not in metrics:
                found.append(f"{name}: reads {metric}, which no crate exports")
    return found


def main() -> int:
    tests = [yaml.safe_load(p.read_text()) for p in sorted(TESTS.glob("*.yml"))]
    tests = [t for doc in tests for t in doc.get("tests", [])]
    found = problems(RULES.read_text(), tests, RUNBOOK.read_text(), exported_metrics())
    for line in found:
        print(f"alert rules: {line}", file=sys.stderr)
    if found:
        return 1
    count = RULES.read_text().count("- alert:")
    print(f"alert rules: {count} alerts, each with for, severity, a runbook section, firing and quiet cases", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
