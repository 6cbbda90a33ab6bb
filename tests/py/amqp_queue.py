"""Reads back what the amqp sink published, with pika (a client that is not Relaycord).

  amqp_queue.py setup   --url URL --exchange X --queue Q   declare X (topic, durable), a durable
                                                           queue Q bound with '#'; print "ready"
  amqp_queue.py read    --url URL --queue Q --expect N     consume until N distinct message ids
                                                           (or --timeout); one JSON line each
  amqp_queue.py cleanup --url URL --exchange X --queue Q   delete both
"""

import argparse
import json
import sys
import time

import pika


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["setup", "read", "cleanup"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--exchange")
    parser.add_argument("--queue", required=True)
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()

    connection = pika.BlockingConnection(pika.URLParameters(args.url))
    channel = connection.channel()
    if args.action == "setup":
        channel.exchange_declare(args.exchange, exchange_type="topic", durable=True)
        channel.queue_declare(args.queue, durable=True)
        channel.queue_bind(args.queue, args.exchange, routing_key="#")
        print("ready", flush=True)
    elif args.action == "cleanup":
        channel.queue_delete(args.queue)
        channel.exchange_delete(args.exchange)
    else:
        seen = set()
        deadline = time.monotonic() + args.timeout
        while len(seen) < args.expect and time.monotonic() < deadline:
            method, props, body = channel.basic_get(args.queue, auto_ack=True)
            if method is None:
                time.sleep(0.05)
                continue
            envelope = json.loads(body)
            seen.add(props.message_id)
            print(json.dumps({
                "message_id": props.message_id,
                "envelope_id": envelope["id"],
                "routing_key": method.routing_key,
                "delivery_mode": props.delivery_mode,
                "content_type": props.content_type,
                "type": props.type,
            }), flush=True)
        if len(seen) < args.expect:
            print(f"timeout: {len(seen)} of {args.expect}", file=sys.stderr, flush=True)
    connection.close()


if __name__ == "__main__":
    main()
