"""Discord's side of webhook events, written without any of Relaycord's code.

Signs with PyNaCl (ed25519 over timestamp + body, as Discord does) and speaks HTTP with
the standard library.

    webhook_events_client.py public-key SEED_HEX        prints the public key (hex)
    webhook_events_client.py run URL SEED_HEX COUNT     runs the scenario, prints a report

`run` checks what a Discord endpoint must answer: PING gets 204 with an empty body; a
wrong key, a tampered body, a stale timestamp and missing headers get 401; a body over
256 KiB gets 413. Then it sends COUNT events (installs, removals, purchases), every fifth
one twice as Discord does when it did not see the 204, and requires 204 for each. It
exits non-zero on the first unexpected status and prints, on success, a JSON report with
every event it sent, for the caller to find on the bus.
"""

import datetime
import json
import sys
import time
import urllib.error
import urllib.request

from nacl.signing import SigningKey

APPLICATION_ID = "1234560123453231555"


def post(url: str, body: bytes, headers: dict) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", "application/json")
    for name, value in headers.items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def signed(key: SigningKey, body: bytes, timestamp: int | None = None) -> dict:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = key.sign(stamp.encode() + body).signature.hex()
    return {"X-Signature-Ed25519": signature, "X-Signature-Timestamp": stamp}


def expect(what: str, got: int, wanted: int) -> None:
    if got != wanted:
        sys.exit(f"{what}: got HTTP {got}, expected {wanted}")


class Timestamps:
    """Discord's event timestamps (microseconds, no zone), each later than the last."""

    def __init__(self) -> None:
        self.last = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)

    def next(self) -> str:
        now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
        self.last = max(now, self.last + datetime.timedelta(microseconds=1))
        return self.last.isoformat(timespec="microseconds")


def event(i: int, timestamps: Timestamps) -> dict:
    user = {"id": str(211178765189277770 + i), "username": f"py{i}", "discriminator": "0",
            "global_name": None, "avatar": None}
    guild = str(390926798626357000 + i % 3)
    if i % 3 == 0:
        kind, guild_id = "APPLICATION_AUTHORIZED", guild
        data = {"integration_type": 0, "scopes": ["applications.commands", "bot"],
                "user": user, "guild": {"id": guild, "name": "Py Guild"}}
    elif i % 3 == 1:
        kind, guild_id = "APPLICATION_DEAUTHORIZED", None
        data = {"user": user}
    else:
        kind, guild_id = "ENTITLEMENT_CREATE", guild
        data = {"application_id": APPLICATION_ID, "consumed": False, "deleted": False,
                "gift_code_flags": 0, "id": str(2234505980407808000 + i), "promotion_id": None,
                "sku_id": "123489045643835123", "type": 4, "user_id": user["id"],
                "guild_id": guild}
    timestamp = timestamps.next()
    body = json.dumps({"version": 1, "application_id": APPLICATION_ID, "type": 1,
                       "event": {"type": kind, "timestamp": timestamp, "data": data}})
    return {"type": kind, "timestamp": timestamp, "guild_id": guild_id, "body": body}


def run(url: str, key: SigningKey, count: int) -> dict:
    ping = json.dumps({"version": 1, "application_id": APPLICATION_ID, "type": 0}).encode()
    status, body = post(url, ping, signed(key, ping))
    expect("PING", status, 204)
    if body:
        sys.exit(f"PING: 204 with a body: {body!r}")

    sample = event(-1, Timestamps())["body"].encode()
    other = SigningKey.generate()
    refusals = {
        "wrong key": (sample, signed(other, sample)),
        "tampered body": (sample.replace(b'"version": 1', b'"version": 2'), signed(key, sample)),
        "stale timestamp": (sample, signed(key, sample, int(time.time()) - 600)),
        "no signature headers": (sample, {}),
    }
    for what, (body, headers) in refusals.items():
        status, _ = post(url, body, headers)
        expect(what, status, 401)
    big = json.dumps({"version": 1, "type": 1, "pad": "x" * (256 * 1024)}).encode()
    status, _ = post(url, big, signed(key, big))
    expect("a body over 256 KiB", status, 413)

    timestamps = Timestamps()
    events = [event(i, timestamps) for i in range(count)]
    for i, e in enumerate(events):
        body = e["body"].encode()
        for attempt in range(2 if i % 5 == 0 else 1):
            status, _ = post(url, body, signed(key, body))
            expect(f"event {i} ({e['type']}), attempt {attempt + 1}", status, 204)
    return {"events": events, "refused": len(refusals) + 1}


def main() -> None:
    command, *args = sys.argv[1:]
    if command == "public-key":
        print(SigningKey(bytes.fromhex(args[0])).verify_key.encode().hex())
    elif command == "run":
        url, seed, count = args
        print(json.dumps(run(url, SigningKey(bytes.fromhex(seed)), int(count))))
    else:
        sys.exit(f"unknown command {command}")


if __name__ == "__main__":
    main()
