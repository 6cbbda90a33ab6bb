// Validates AsyncAPI documents with the AsyncAPI project's own parser (@asyncapi/parser,
// pinned in package.json): `node validate.mjs FILE…`. Prints one JSON line per file,
// {"file", "errors": [...], "warnings": n, "channels": [...addresses]}, and exits 1 when
// any document has an error-level diagnostic or does not parse.
import { readFileSync } from 'node:fs';
import { Parser, DiagnosticSeverity } from '@asyncapi/parser';

const parser = new Parser();
let failed = false;
for (const file of process.argv.slice(2)) {
  const { document, diagnostics } = await parser.parse(readFileSync(file, 'utf8'));
  const errors = diagnostics
    .filter((d) => d.severity === DiagnosticSeverity.Error)
    .map((d) => `${d.code}: ${d.message} at /${d.path.join('/')}`);
  const warnings = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Warning);
  if (errors.length > 0 || !document) failed = true;
  console.log(JSON.stringify({
    file,
    errors,
    warnings: warnings.map((d) => `${d.code}: ${d.message} at /${d.path.join('/')}`),
    channels: document ? document.channels().all().map((c) => c.address()) : [],
    version: document ? document.version() : null,
  }));
}
process.exit(failed ? 1 : 0);
