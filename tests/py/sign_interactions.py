"""Sign Discord interactions with PyNaCl: an ed25519 implementation independent of Relaycord's.

Reads a 32-byte seed (hex) as the first argument and one JSON object per stdin line,
{"timestamp": "...", "body": "..."}; prints the public key (hex) first, then one
signature (hex) per input line, each over timestamp + body, exactly as Discord signs.
"""

import json
import sys

from nacl.signing import SigningKey


def main() -> None:
    key = SigningKey(bytes.fromhex(sys.argv[1]))
    print(key.verify_key.encode().hex(), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        message = (request["timestamp"] + request["body"]).encode()
        print(key.sign(message).signature.hex(), flush=True)


if __name__ == "__main__":
    main()
