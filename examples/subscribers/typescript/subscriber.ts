// A Relaycord subscriber in TypeScript (nats.js v3: @nats-io/jetstream): a durable
// JetStream pull consumer on a filtered subject that validates each envelope against the
// contract's JSON Schema (ajv), drops what it has already seen by Nats-Msg-Id, and acks.
//
//   npm ci && npm run build
//   node dist/subscriber.js --url nats://127.0.0.1:4222 --filter 'discord.gateway.MESSAGE_CREATE.*'
//
// Prints one JSON line per message ({"id", "subject", "type", "source", "msg_id",
// "duplicate"}; {"invalid": id, "error": …} for an envelope the schema refuses), after a
// first line {"ready": true} once the consumer exists. The contract: docs/bus.md and
// docs/contract/ (envelope.schema.json, asyncapi.json). For types of Discord's payload
// (`data`), use discord-api-types.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import Ajv from "ajv";
import addFormats from "ajv-formats";
import { connect } from "@nats-io/transport-node";
import {
  AckPolicy,
  DeliverPolicy,
  JetStreamApiError,
  jetstream,
  jetstreamManager,
} from "@nats-io/jetstream";

/** The envelope fields this subscriber reads; unknown fields are ignored, as the
 * compatibility promise asks. */
interface Envelope {
  id: string;
  source: "gateway" | "interaction" | "webhook";
  type: string;
  guild_id: string | null;
  data: unknown;
}

/** Ids already processed. An id never names two events, so a seen id can be dropped
 * forever; this keeps the last `capacity` in memory (a database table works too). */
class Seen {
  private ids = new Set<string>();
  constructor(private capacity: number) {}
  /** Records `id`; false when it was already there. */
  add(id: string): boolean {
    if (this.ids.has(id)) return false;
    this.ids.add(id);
    if (this.ids.size > this.capacity) {
      const oldest = this.ids.values().next().value as string;
      this.ids.delete(oldest);
    }
    return true;
  }
}

const emit = (line: object) => process.stdout.write(JSON.stringify(line) + "\n");

async function main(): Promise<void> {
  const { values: args } = parseArgs({
    options: {
      url: { type: "string", default: "nats://127.0.0.1:4222" },
      // The events stream: <PREFIX>_GATEWAY holds gateway and webhook events.
      stream: { type: "string", default: "DISCORD_GATEWAY" },
      // Durable consumer name, shared by this subscriber's replicas.
      durable: { type: "string", default: "example-typescript" },
      // e.g. discord.gateway.MESSAGE_CREATE.*, or discord.> for gateway and webhook events
      filter: { type: "string", default: "discord.gateway.>" },
      schema: {
        type: "string",
        default: join(__dirname, "..", "..", "..", "..", "docs", "contract", "envelope.schema.json"),
      },
    },
  });
  const schema = JSON.parse(readFileSync(args.schema!, "utf8"));
  // ajv-formats checks `format` (received_at is an RFC 3339 date-time).
  const ajv = new Ajv();
  addFormats(ajv);
  const validate = ajv.compile<Envelope>(schema);

  const nc = await connect({ servers: args.url!.split(",") });
  const jsm = await jetstreamManager(nc);
  // Created if missing, shared if it exists: a restarted subscriber resumes where the
  // durable consumer stands (acked messages are not delivered again).
  try {
    await jsm.consumers.info(args.stream!, args.durable!);
  } catch (e) {
    if (!(e instanceof JetStreamApiError)) throw e;
    await jsm.consumers.add(args.stream!, {
      durable_name: args.durable!,
      filter_subject: args.filter!,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      ack_wait: 30_000_000_000, // nanoseconds
      max_deliver: 10,
    });
  }
  const consumer = await jetstream(nc).consumers.get(args.stream!, args.durable!);
  emit({ ready: true });

  const messages = await consumer.consume({ max_messages: 256 });
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.on(signal, () => void messages.close());
  }
  const seen = new Seen(1_000_000);
  for await (const msg of messages) {
    const msgId = msg.headers?.get("Nats-Msg-Id") || null;
    let envelope: unknown;
    try {
      envelope = msg.json();
    } catch (e) {
      envelope = undefined;
    }
    if (!validate(envelope)) {
      // Never valid on a later delivery either: terminate instead of retrying.
      const error = validate.errors?.map((e) => `${e.instancePath} ${e.message}`).join("; ");
      emit({ invalid: msgId, subject: msg.subject, error: error ?? "not JSON" });
      msg.term();
      continue;
    }
    const duplicate = !seen.add(msgId ?? envelope.id);
    if (!duplicate) {
      // Your processing goes here; skip the ack (or msg.nak()) to have it redelivered.
    }
    emit({
      id: envelope.id,
      msg_id: msgId,
      subject: msg.subject,
      type: envelope.type,
      source: envelope.source,
      duplicate,
    });
    msg.ack();
  }
  await nc.drain();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
