#!/usr/bin/env bash
# Alert rules: `promtool check rules`, then `promtool test rules`, and every alert in the
# rules file has a test case that expects it to fire.
set -euo pipefail
cd "$(dirname "$0")/../.."

rules=grafana/alerts/relaycord.rules.yml
promtool check rules "$rules"
promtool test rules grafana/alerts/tests/*.yml

# An alert counts as tested when some case evaluates it and expects a firing alert
# (`exp_labels` right after the `alertname:` line).
untested=()
for alert in $(sed -n 's/^ *- alert: *//p' "$rules"); do
    if ! grep -A2 -h "alertname: $alert\$" grafana/alerts/tests/*.yml | grep -q "exp_labels"; then
        untested+=("$alert")
    fi
done
if [ "${#untested[@]}" -gt 0 ]; then
    echo "alerts without a firing promtool test case: ${untested[*]}" >&2
    exit 1
fi
echo "alerts: $(grep -c '^ *- alert:' "$rules") rules, each with a firing test case" >&2
