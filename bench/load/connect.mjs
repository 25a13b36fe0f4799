// Connection burst: open N authenticated websocket connections at once.
//
//   node bench/load/connect.mjs <config.json>
//
// config: {url, tokens: [...], raw}
// With raw, plain WebSockets to <url>/ws (the bare aiohttp floor, which has no
// Engine.IO): one per token, the token unused.
// Prints {"phase": "connected", opened, failed, seconds, errors: {message: count}},
// then waits for a line on stdin (the orchestrator measures the idle server), closes
// every connection and prints {"phase": "done"}.
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { io } from "socket.io-client";
import { WebSocket } from "ws";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = (record) => process.stdout.write(JSON.stringify(record) + "\n");

const sockets = [];
const errors = {};
const started = performance.now();
function openRaw(resolve) {
  const socket = new WebSocket(config.url.replace(/^http/, "ws") + "/ws", { perMessageDeflate: false });
  socket.once("open", () => { sockets.push(socket); resolve(true); });
  socket.once("error", (error) => {
    const key = String(error && error.message).slice(0, 80);
    errors[key] = (errors[key] || 0) + 1;
    resolve(false);
  });
}

const attempts = config.tokens.map((token, index) => new Promise((resolve) => {
  if (config.raw) return openRaw(resolve);
  const socket = io(config.url, { transports: ["websocket"], reconnection: false, timeout: 30000, auth: { token }, query: { room: `idle-${index}` } });
  socket.once("connect", () => { sockets.push(socket); resolve(true); });
  socket.once("connect_error", (error) => {
    const key = String(error && error.message).slice(0, 80);
    errors[key] = (errors[key] || 0) + 1;
    socket.close();
    resolve(false);
  });
}));
const results = await Promise.all(attempts);
const opened = results.filter(Boolean).length;
out({ phase: "connected", opened, failed: results.length - opened, seconds: +((performance.now() - started) / 1000).toFixed(2), errors });
const lines = createInterface({ input: process.stdin });
for await (const _ of lines) break;
for (const socket of sockets) socket.close();
out({ phase: "done" });
process.exit(0);
