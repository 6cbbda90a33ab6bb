"""Writes a Grafana dashboard (JSON) as `const dashboard: Dashboard = …;` for tsc.

JSON strings cannot stand for TypeScript's string enums, so the few enum-typed fields of
the Dashboard type are written as the enum's members: a value mapping's `type`
(MappingType), a color's `mode` (FieldColorModeId), a thresholds config's `mode`
(ThresholdsMode). A value the enum does not have is written as a plain string, which tsc
then refuses. Everything else is JSON as is.

Usage: python3 tests/deploy/dashboard_to_ts.py DASHBOARD.json > out.ts
"""

from __future__ import annotations

import json
import sys

# Enum members by value, as @grafana/schema declares them (raw/dashboard/x/types.gen.d.ts).
ENUMS = {
    "MappingType": {"range": "RangeToText", "regex": "RegexToText", "special": "SpecialValue", "value": "ValueToText"},
    "FieldColorModeId": {
        "continuous-BlPu": "ContinuousBlPu", "continuous-BlYlRd": "ContinuousBlYlRd",
        "continuous-blues": "ContinuousBlues", "continuous-cividis": "ContinuousCividis",
        "continuous-GrYlRd": "ContinuousGrYlRd", "continuous-greens": "ContinuousGreens",
        "continuous-inferno": "ContinuousInferno", "continuous-magma": "ContinuousMagma",
        "continuous-plasma": "ContinuousPlasma", "continuous-purples": "ContinuousPurples",
        "continuous-RdYlGr": "ContinuousRdYlGr", "continuous-reds": "ContinuousReds",
        "continuous-viridis": "ContinuousViridis", "continuous-YlBl": "ContinuousYlBl",
        "continuous-YlRd": "ContinuousYlRd", "fixed": "Fixed", "palette-classic": "PaletteClassic",
        "palette-classic-by-name": "PaletteClassicByName", "shades": "Shades", "thresholds": "Thresholds",
    },
    "ThresholdsMode": {"absolute": "Absolute", "percentage": "Percentage"},
}


def enum_for(path: tuple[str, ...]) -> str | None:
    """The enum a string at this path of keys ('#' for a list index) is typed with."""
    if len(path) >= 3 and path[-3:-1] == ("mappings", "#") and path[-1] == "type":
        return "MappingType"
    if len(path) >= 2 and path[-2:] == ("color", "mode"):
        return "FieldColorModeId"
    if len(path) >= 2 and path[-2:] == ("thresholds", "mode"):
        return "ThresholdsMode"
    return None


def to_ts(value, path: tuple[str, ...] = ()) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)}: {to_ts(v, path + (k,))}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(to_ts(v, path + ("#",)) for v in value) + "]"
    enum = enum_for(path)
    if enum and isinstance(value, str) and value in ENUMS[enum]:
        return f"{enum}.{ENUMS[enum][value]}"
    return json.dumps(value)


def main() -> None:
    dashboard = json.load(open(sys.argv[1]))
    print("import { Dashboard, FieldColorModeId, MappingType, ThresholdsMode } from '@grafana/schema';")
    print("const dashboard: Dashboard = " + to_ts(dashboard) + ";")
    print("void [FieldColorModeId, MappingType, ThresholdsMode];")
    print("export default dashboard;")


if __name__ == "__main__":
    main()
