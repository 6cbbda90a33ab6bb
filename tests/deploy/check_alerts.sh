#!/usr/bin/env bash
# Alert rules: `promtool check rules`, then `promtool test rules`, then what promtool does
# not check (check_alert_rules.py): for, severity, runbook_url, firing and quiet cases.
set -euo pipefail
cd "$(dirname "$0")/../.."

rules=grafana/alerts/relaycord.rules.yml
promtool check rules "$rules"
promtool test rules grafana/alerts/tests/*.yml

# Every alert: a `for:`, a severity, a runbook section that exists, a firing and a quiet
# case, and only metrics the code exports (tests/deploy/check_alert_rules.py).
python3 tests/deploy/check_alert_rules.py
