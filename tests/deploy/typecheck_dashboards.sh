#!/usr/bin/env bash
# Type-checks every grafana/dashboards/*.json against Grafana's own `Dashboard` type
# (npm @grafana/schema, pinned in grafana/.tsc/package-lock.json) with `tsc --strict`.
# Each dashboard becomes `const d: Dashboard = <json>;`, so a misspelt or misplaced key
# is an excess-property error and a wrong value type is an assignability error.
set -euo pipefail
cd "$(dirname "$0")/../.."

tsc_dir=grafana/.tsc
if [ ! -x "$tsc_dir/node_modules/.bin/tsc" ] || [ ! -d "$tsc_dir/node_modules/@grafana/schema" ]; then
    (cd "$tsc_dir" && npm ci --no-audit --no-fund --silent)
fi

gen="$tsc_dir/gen"
rm -rf "$gen"
mkdir -p "$gen"
dashboards=(grafana/dashboards/*.json)
[ -e "${dashboards[0]}" ] || { echo "no dashboards in grafana/dashboards" >&2; exit 1; }
# The enum-typed fields (value mappings, color and thresholds modes) are written as the
# enums' members: tests/deploy/dashboard_to_ts.py.
for json in "${dashboards[@]}"; do
    python3 tests/deploy/dashboard_to_ts.py "$json" >"$gen/$(basename "$json" .json).ts"
done
tsc() {
    "$tsc_dir/node_modules/.bin/tsc" --strict --noEmit \
        --target es2022 --module nodenext --moduleResolution nodenext "$@"
}
tsc "$gen"/*.ts

# The check must be able to fail: a dashboard with a misspelt panel key, a string
# schemaVersion and a value mapping of a type Grafana does not have is refused.
python3 - "${dashboards[0]}" >"$gen/broken.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["schemaVersion"] = str(d["schemaVersion"])
d["panels"][0]["gridpos"] = d["panels"][0].pop("gridPos")
print(json.dumps(d))
PY
python3 tests/deploy/dashboard_to_ts.py "$gen/broken.json" >"$gen/broken.ts"
python3 - "${dashboards[0]}" >"$gen/broken-enum.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
d["panels"][0].setdefault("fieldConfig", {}).setdefault("defaults", {})["mappings"] = [
    {"type": "valuez", "options": {"0": {"text": "Down"}}}
]
print(json.dumps(d))
PY
python3 tests/deploy/dashboard_to_ts.py "$gen/broken-enum.json" >"$gen/broken-enum.ts"
if out="$(tsc "$gen/broken.ts" "$gen/broken-enum.ts" 2>&1)"; then
    echo "typecheck: a broken dashboard passed tsc; the check is not working" >&2
    exit 1
fi
for expected in '"gridpos"'"' does not exist" "Type 'string' is not assignable to type 'number'" '"valuez"'; do
    grep -q "$expected" <<<"$out" || { echo "typecheck: tsc did not flag $expected:" >&2; echo "$out" >&2; exit 1; }
done
echo "typecheck: ${#dashboards[@]} dashboards match @grafana/schema's Dashboard type" >&2
