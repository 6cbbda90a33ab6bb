"""The Helm chart ships copies of grafana/dashboards/*.json and the alert rules file; they
must not drift from the originals (grafana/ is the one source of truth).

Run: python3 tests/deploy/test_grafana_copies.py. To refresh the copies after editing:
cp grafana/dashboards/*.json helm/relaycord/files/dashboards/ &&
cp grafana/alerts/relaycord.rules.yml helm/relaycord/files/alerts/
"""

import shutil
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART_FILES = ROOT / "helm" / "relaycord" / "files"

# (source folder, copy folder, file pattern)
COPIES = [
    (ROOT / "grafana" / "dashboards", CHART_FILES / "dashboards", "*.json"),
    (ROOT / "grafana" / "alerts", CHART_FILES / "alerts", "*.rules.yml"),
]


def drift(source: Path, copy: Path, pattern: str) -> list[str]:
    """What differs between the files matching `pattern` in the two folders."""
    originals = {p.name: p for p in source.glob(pattern)}
    copies = {p.name: p for p in copy.glob(pattern)}
    problems = [f"{copy / name} is missing" for name in sorted(originals.keys() - copies.keys())]
    problems += [f"{copy / name} has no original in {source}" for name in sorted(copies.keys() - originals.keys())]
    problems += [
        f"{copies[name]} differs from {originals[name]}"
        for name in sorted(originals.keys() & copies.keys())
        if originals[name].read_bytes() != copies[name].read_bytes()
    ]
    return problems


class ChartCopiesMatchGrafana(unittest.TestCase):
    def test_the_chart_ships_exactly_the_dashboards_and_rules(self):
        for source, copy, pattern in COPIES:
            self.assertTrue(any(source.glob(pattern)), f"nothing matches {source / pattern}")
            self.assertEqual(drift(source, copy, pattern), [])

    def test_drift_is_detected(self):
        with tempfile.TemporaryDirectory() as tmp:
            source, copy = Path(tmp, "source"), Path(tmp, "copy")
            shutil.copytree(ROOT / "grafana" / "dashboards", source)
            shutil.copytree(source, copy)
            self.assertEqual(drift(source, copy, "*.json"), [])
            edited = sorted(copy.glob("*.json"))[0]
            edited.write_text(edited.read_text().replace('"title"', '"title" ', 1))
            (copy / "stale.json").write_text("{}")
            (source / "new.json").write_text("{}")
            problems = drift(source, copy, "*.json")
            self.assertEqual(len(problems), 3, problems)
            self.assertIn(edited.name, " ".join(problems))


if __name__ == "__main__":
    unittest.main()
