"""Validates envelopes (one JSON object per line) against the envelope's JSON Schema with
PyPI's `jsonschema`, the reference implementation: `validate_envelopes.py SCHEMA FILE`.

Prints one JSON object: {"valid": {type or source: count, …, "total": n},
"invalid": {id: first error}}. Used by tests/it/contract.rs.
"""

import json
import sys
from collections import Counter

import jsonschema


def main() -> None:
    schema_path, envelopes_path = sys.argv[1:3]
    with open(schema_path, encoding="utf-8") as f:
        schema = json.load(f)
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    valid: Counter = Counter()
    invalid = {}
    with open(envelopes_path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            envelope = json.loads(line)
            error = next(iter(validator.iter_errors(envelope)), None)
            if error is not None:
                invalid[str(envelope.get("id"))] = f"{error.message} at {list(error.absolute_path)}"
                continue
            valid[envelope["type"]] += 1
            valid[envelope["source"]] += 1
            valid["total"] += 1
    print(json.dumps({"valid": valid, "invalid": invalid}))


if __name__ == "__main__":
    main()
