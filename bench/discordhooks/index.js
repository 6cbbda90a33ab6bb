// discordhooks, the baseline of docs/benchmarks.md ("vs discordhooks"): its entire code as
// published, with only what points it at the Relaycord simulator instead of Discord marked
// "bench:". Run by `relaycord-bench vs-discordhooks` (scripts/bench.sh discordhooks):
// DISCORD_TOKEN=sim-token DISCORD_API=http://127.0.0.1:PORT/api ENDPOINT=http://… node index.js
// No transport compression, as published (CompressionMethod.ZlibStream in @discordjs/ws 1.x
// needs the native zlib-sync addon, which the published code does not install).
import { WebSocketManager, WebSocketShardEvents, CompressionMethod } from '@discordjs/ws';
import { REST } from '@discordjs/rest';
const ALL_INTENTS = 3276541;
// 1. Set up the persistent websocket connection manager
// bench: REST `api` option so /gateway/bot (and thus the gateway URL) comes from the simulator.
const rest = new REST({ api: process.env.DISCORD_API }).setToken(process.env.DISCORD_TOKEN);
const manager = new WebSocketManager({
token: process.env.DISCORD_TOKEN,
intents: process.env.INTENTS || ALL_INTENTS,
rest,
});
// 2. On each event, forward that event to an endpoint
manager.on(WebSocketShardEvents.Dispatch, async (event) => {
const t = event?.data?.t;
const s = event?.data?.s;
console.info(`${s}: ${t} event dispatching...`);
await fetch(process.env.ENDPOINT, {
method: "POST",
body: JSON.stringify(event),
})
console.info(`${s}: ${t} event dispatched.`);
});
// 3. Start the service
await manager.connect();
