"""Static checks of the dashboards' and alerts' queries (grafana/), beside the live check of
tests/deploy/test_dashboards.py (which needs every query to return data, but cannot tell a
right number from one multiplied by the replica count).

- Gauges that every replica of a sink reports for the whole consumer or stream (lag, dead
  letters, the DLQ's size) are aggregated with max (or min) per sink first: a sum would read
  them once per replica.
- The Ingest dashboard has a per-shard status timeline, the Sinks dashboard a latency heatmap.

Run: python3 tests/deploy/test_dashboard_queries.py
"""

from __future__ import annotations

import json
import re
import unittest
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "grafana" / "dashboards"
RULES = ROOT / "grafana" / "alerts" / "relaycord.rules.yml"

# Reported by every replica of a sink with the same value (crates/sinks/src/metrics.rs).
PER_CONSUMER = [
    "relaycord_sink_consumer_pending",
    "relaycord_sink_consumer_ack_pending",
    "relaycord_sink_dead_letters",
    "relaycord_sink_dead_letters_max",
    "relaycord_sink_paused",
    "relaycord_dlq_bytes",
    "relaycord_dlq_max_bytes",
]
# Aggregations across series that would count a replicated gauge once per replica.
ACROSS_REPLICAS = {"sum", "avg", "count", "stddev", "stdvar", "quantile", "topk", "bottomk"}


def queries() -> list[tuple[str, str]]:
    """(where, expr) for every panel target of every dashboard and every alert rule."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{path.name}: {panel['title']}", target["expr"]))
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            found.append((f"{RULES.name}: {rule.get('alert', rule.get('record'))}", rule["expr"]))
    return found


def replica_sums(expr: str) -> list[str]:
    """The aggregations applied directly to a per-consumer gauge that would count it once
    per replica (sum, avg, count, ...); max, min and per-series functions are fine."""
    bad = []
    for metric in PER_CONSUMER:
        for m in re.finditer(r"(\w+)\s*(?:(?:by|without)\s*\([^)]*\)\s*)?\(\s*%s\b" % metric, expr):
            if m.group(1) in ACROSS_REPLICAS:
                bad.append(f"{m.group(1)}(... {metric} ...)")
    return bad


class DashboardQueries(unittest.TestCase):
    def test_per_consumer_gauges_are_not_summed_over_replicas(self):
        problems = [f"{where}: {b}" for where, expr in queries() for b in replica_sums(expr)]
        self.assertEqual(problems, [])

    def test_the_check_catches_a_sum_over_replicas(self):
        self.assertEqual(replica_sums('sum(relaycord_sink_dead_letters{job=~"$job"})'),
                         ["sum(... relaycord_sink_dead_letters ...)"])
        self.assertEqual(replica_sums("sum by (sink) (relaycord_sink_consumer_pending)"),
                         ["sum(... relaycord_sink_consumer_pending ...)"])
        self.assertEqual(replica_sums("sum(max by (namespace, sink) (relaycord_sink_dead_letters))"), [])

    def test_ingest_has_a_per_shard_status_timeline(self):
        panels = json.loads((DASHBOARDS / "ingest.json").read_text())["panels"]
        timelines = [p for p in panels if p["type"] == "state-timeline"]
        self.assertEqual(len(timelines), 1)
        (target,) = timelines[0]["targets"]
        self.assertRegex(target["expr"], r"^max by \(shard, shard_count\) \(relaycord_shard_up\{")
        mapping = timelines[0]["fieldConfig"]["defaults"]["mappings"][0]
        self.assertEqual({k: v["text"] for k, v in mapping["options"].items()}, {"0": "down", "1": "up"})

    def test_sinks_have_a_latency_heatmap_of_histogram_buckets(self):
        panels = json.loads((DASHBOARDS / "sinks.json").read_text())["panels"]
        heatmaps = [p for p in panels if p["type"] == "heatmap"]
        self.assertEqual(len(heatmaps), 1)
        (target,) = heatmaps[0]["targets"]
        self.assertEqual(target["format"], "heatmap")
        self.assertRegex(target["expr"], r"^sum by \(le\) \(rate\(relaycord_sink_end_to_end_seconds_bucket\{")
        # Prometheus's buckets are already counts: Grafana must not bucket them again.
        self.assertIs(heatmaps[0]["options"]["calculate"], False)

    def test_panel_ids_and_positions_are_unique(self):
        for path in sorted(DASHBOARDS.glob("*.json")):
            panels = json.loads(path.read_text())["panels"]
            ids = [p["id"] for p in panels]
            self.assertEqual(len(ids), len(set(ids)), path.name)
            cells = set()
            for p in panels:
                g = p["gridPos"]
                for x in range(g["x"], g["x"] + g["w"]):
                    for y in range(g["y"], g["y"] + g["h"]):
                        self.assertNotIn((x, y), cells, f"{path.name}: {p['title']} overlaps another panel")
                        cells.add((x, y))


if __name__ == "__main__":
    unittest.main()
