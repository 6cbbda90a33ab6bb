"""Subscribe to Relaycord's gateway subjects with nats-py, a client that is not Relaycord.

Prints one JSON line per message: the subject, the Nats-Msg-Id header and the envelope's
id and type, so the Rust test can check the bus contract from outside. Prints "ready"
once the subscription is registered with the server.
"""

import argparse
import asyncio
import json
import sys

import nats


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--subject", default="discord.gateway.>")
    parser.add_argument("--count", type=int, required=True,
                        help="stop after this many messages of --types")
    parser.add_argument("--types", default="",
                        help="comma-separated event types that count (default: all)")
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    counted = set(filter(None, args.types.split(",")))

    nc = await nats.connect(args.url)
    done = asyncio.Event()
    seen = set()

    async def on_message(msg):
        envelope = json.loads(msg.data)
        print(json.dumps({
            "subject": msg.subject,
            "msg_id": (msg.headers or {}).get("Nats-Msg-Id"),
            "id": envelope["id"],
            "type": envelope["type"],
            "data_is_object": isinstance(envelope["data"], dict),
        }), flush=True)
        # Distinct ids: a core subscriber also sees publishes that JetStream then drops
        # as duplicates (a retried publish, Discord's own repeats), so counting messages
        # could stop before every event arrived.
        if not counted or envelope["type"] in counted:
            seen.add(envelope["id"])
        if len(seen) >= args.count:
            done.set()

    await nc.subscribe(args.subject, cb=on_message)
    await nc.flush()
    print("ready", flush=True)
    try:
        await asyncio.wait_for(done.wait(), args.timeout)
    except asyncio.TimeoutError:
        print(f"timeout after {len(seen)} distinct events", file=sys.stderr, flush=True)
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
