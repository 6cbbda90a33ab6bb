"""A Relaycord subscriber in Python: a durable JetStream pull consumer on a filtered
subject that validates each envelope against the contract's JSON Schema, drops what it
has already seen by Nats-Msg-Id, and acks.

    pip install -r requirements.txt
    python3 subscriber.py --url nats://127.0.0.1:4222 --filter 'discord.gateway.MESSAGE_CREATE.*'

Prints one JSON line per message ({"id", "subject", "type", "source", "msg_id",
"duplicate"}; {"invalid": id, "error": …} for an envelope the schema refuses), after a
first line {"ready": true} once the consumer exists. The contract: docs/bus.md and
docs/contract/ (envelope.schema.json, asyncapi.json).
"""

import argparse
import asyncio
import json
import os
import signal
from collections import OrderedDict

import jsonschema
import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SCHEMA = os.path.join(HERE, "..", "..", "..", "docs", "contract", "envelope.schema.json")


class Seen:
    """Ids already processed. An id never names two events, so a seen id can be dropped
    forever; this keeps the last `size` in memory (a database table works too)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.ids: OrderedDict[str, None] = OrderedDict()

    def add(self, event_id: str) -> bool:
        """Records `event_id`; False when it was already there."""
        if event_id in self.ids:
            self.ids.move_to_end(event_id)
            return False
        self.ids[event_id] = None
        if len(self.ids) > self.size:
            self.ids.popitem(last=False)
        return True


def emit(line: dict) -> None:
    print(json.dumps(line), flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--stream", default="DISCORD_GATEWAY",
                        help="the events stream: <PREFIX>_GATEWAY holds gateway and webhook events")
    parser.add_argument("--durable", default="example-python",
                        help="durable consumer name, shared by this subscriber's replicas")
    parser.add_argument("--filter", default="discord.gateway.>",
                        help="filter subject, e.g. discord.gateway.MESSAGE_CREATE.*, or discord.> for gateway and webhook events")
    parser.add_argument("--schema", default=DEFAULT_SCHEMA)
    args = parser.parse_args()

    with open(args.schema, encoding="utf-8") as f:
        schema = json.load(f)
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)

    nc = await nats.connect(args.url)
    js = nc.jetstream()
    # Created if missing, shared if it exists: a restarted subscriber resumes where the
    # durable consumer stands (acked messages are not delivered again).
    sub = await js.pull_subscribe(
        args.filter,
        durable=args.durable,
        stream=args.stream,
        config=ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=30,
            max_deliver=10,
        ),
    )
    emit({"ready": True})

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    seen = Seen(1_000_000)
    while not stop.is_set():
        try:
            messages = await sub.fetch(batch=256, timeout=1)
        except nats.errors.TimeoutError:
            continue
        for msg in messages:
            msg_id = (msg.headers or {}).get("Nats-Msg-Id")
            try:
                envelope = json.loads(msg.data)
                error = next(iter(validator.iter_errors(envelope)), None)
            except ValueError as e:
                envelope, error = None, e
            if error is not None:
                # Never valid on a later delivery either: terminate instead of retrying.
                emit({"invalid": msg_id, "subject": msg.subject, "error": str(error)[:500]})
                await msg.term()
                continue
            duplicate = not seen.add(msg_id or envelope["id"])
            if not duplicate:
                pass  # your processing goes here; raise to have the message redelivered
            emit({
                "id": envelope["id"],
                "msg_id": msg_id,
                "subject": msg.subject,
                "type": envelope["type"],
                "source": envelope["source"],
                "duplicate": duplicate,
            })
            await msg.ack()
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
