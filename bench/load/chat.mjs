// Chat load generator: N doctor-patient pairs on the official socket.io-client, each
// client sending at a fixed rate with acks, in steps of rising total rate.
//
//   node bench/load/chat.mjs <config.json>
//
// config: {url, patientUrl?, mode: "hub"|"peer", pairs: [[doctorToken, patientToken], ...],
//          rates: [msgs/s in all, ...], stepSeconds, warmupSeconds}
// patientUrl: where the patients connect (another hub of the fleet); url by default.
// Prints one JSON line per event: {"phase": "ready"}, then per step
// {"phase": "step-start", rate} and {"phase": "step", rate, sent, acked, delivered,
// errors, ack: {p50, p99, max}, e2e: {p50, p99, max}}, and {"phase": "done"}.
// A step's latencies are in milliseconds; e2e is from the send to message:new at the
// other member, on this process's clock.
import { readFileSync } from "node:fs";
import { io } from "socket.io-client";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = (record) => process.stdout.write(JSON.stringify(record) + "\n");
const ACK_TIMEOUT = 5000;

function connect(token, room, url = config.url) {
  return new Promise((resolve, reject) => {
    const socket = io(url, {
      transports: ["websocket"], reconnection: false, timeout: 20000,
      auth: { token }, query: room ? { room } : {},
    });
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", reject);
  });
}

function quantiles(values) {
  if (!values.length) return { p50: null, p99: null, max: null };
  values.sort((a, b) => a - b);
  const at = (q) => values[Math.min(values.length - 1, Math.floor(q * values.length))];
  return { p50: +at(0.5).toFixed(2), p99: +at(0.99).toFixed(2), max: +values[values.length - 1].toFixed(2) };
}

let step = null; // the counters of the step in progress
let counter = 0; // client ids: unique over the whole run, or the hub sees resends

function count(current, code) {
  current.codes[code] = (current.codes[code] || 0) + 1;
}

async function setup() {
  const clients = [];
  for (let i = 0; i < config.pairs.length; i += 1) {
    const [doctorToken, patientToken] = config.pairs[i];
    const room = config.mode === "peer" ? `pair-${i}` : undefined;
    const [doctor, patient] = await Promise.all([
      connect(doctorToken, room),
      connect(patientToken, room, config.patientUrl || config.url),
    ]);
    let conversationId = room;
    if (config.mode === "hub") {
      const opened = await doctor.timeout(ACK_TIMEOUT).emitWithAck("conversation:open", { member_ids: [config.patientIds[i]] });
      if (!opened.ok) throw new Error(`conversation:open: ${JSON.stringify(opened)}`);
      conversationId = opened.conversation.id;
    }
    for (const socket of [doctor, patient]) {
      socket.on("message:new", ({ message }) => {
        if (!step) return;
        const sentAt = Number(message.body.split(" ", 1)[0]);
        if (sentAt >= step.startedAt) { step.delivered += 1; step.e2e.push(performance.now() - sentAt); }
      });
      clients.push({ socket, conversationId });
    }
  }
  return clients;
}

async function run(clients, rate, seconds, record) {
  const perClient = rate / clients.length; // msgs/s each
  const interval = 1000 / perClient;
  step = { startedAt: performance.now(), sent: 0, acked: 0, delivered: 0, errors: 0, codes: {}, ack: [], e2e: [] };
  const current = step;
  const end = current.startedAt + seconds * 1000;
  const senders = clients.map((client, index) => new Promise((resolve) => {
    // Spread the clients' first sends over one interval: no lockstep bursts.
    let next = current.startedAt + (interval * index) / clients.length;
    const tick = () => {
      const now = performance.now();
      if (now >= end) { resolve(); return; }
      while (next <= now) {
        next += interval;
        const sentAt = performance.now();
        current.sent += 1;
        counter += 1;
        client.socket.timeout(ACK_TIMEOUT).emitWithAck("message:send", {
          conversation_id: client.conversationId, client_id: `m${process.pid}-${counter}`,
          body: `${sentAt} load`,
        }).then((ack) => {
          if (ack && ack.ok) { current.acked += 1; current.ack.push(performance.now() - sentAt); }
          else { current.errors += 1; count(current, ack && ack.error ? ack.error.code : "bad ack"); }
        }, () => { current.errors += 1; count(current, "timeout"); });
      }
      setTimeout(tick, Math.max(0, next - performance.now()));
    };
    tick();
  }));
  await Promise.all(senders);
  // Let the last acks and deliveries land (bounded by the ack timeout).
  const settle = performance.now() + ACK_TIMEOUT;
  while (current.acked + current.errors < current.sent && performance.now() < settle) {
    await new Promise((r) => setTimeout(r, 20));
  }
  const elapsed = seconds;
  if (record) {
    out({ phase: "step", rate, seconds: elapsed, sent: current.sent, acked: current.acked,
      delivered: current.delivered, errors: current.errors + (current.sent - current.acked - current.errors),
      error_codes: current.codes, delivered_per_s: +(current.delivered / elapsed).toFixed(1),
      ack: quantiles(current.ack), e2e: quantiles(current.e2e) });
  }
  step = null;
}

const clients = await setup();
out({ phase: "ready", clients: clients.length });
await run(clients, config.rates[0], config.warmupSeconds, false);
for (const rate of config.rates) {
  out({ phase: "step-start", rate });
  await run(clients, rate, config.stepSeconds, true);
  if (config.stopAboveP99 && step === null) {
    // the orchestrator decides when to stop; it reads the step lines
  }
}
for (const { socket } of clients) socket.disconnect();
out({ phase: "done" });
process.exit(0);
