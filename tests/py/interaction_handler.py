"""A minimal Relaycord interaction handler in Python (nats-py), as in docs/interactions.md.

Subscribes to a handler subject in a queue group (run as many copies as you like) and
answers each slash command with a message. Prints "ready" once subscribed.
"""

import argparse
import asyncio
import json

import nats


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", default="nats://127.0.0.1:4222")
    parser.add_argument("--subject", default="relaycord.handlers.ping")
    parser.add_argument("--timeout", type=float, default=120)
    args = parser.parse_args()

    nc = await nats.connect(args.url)

    async def on_request(msg):
        interaction = json.loads(msg.data)  # Discord's interaction, byte for byte
        user = interaction["member"]["user"]["username"]
        name = interaction["data"]["name"]
        reply = {"type": 4, "data": {"content": f"pong from python: /{name} by {user}"}}
        await msg.respond(json.dumps(reply).encode())

    await nc.subscribe(args.subject, queue="handlers", cb=on_request)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.sleep(args.timeout)
    await nc.drain()


if __name__ == "__main__":
    asyncio.run(main())
