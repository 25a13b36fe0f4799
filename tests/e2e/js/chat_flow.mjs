// Drives the official socket.io-client through connect, send, receive, disconnect,
// reconnect and sync against a running hub. Usage: node chat_flow.mjs URL DOCTOR_TOKEN PATIENT_TOKEN
// Prints one JSON line with what it observed; exits non-zero on any failure.
import { io } from "socket.io-client";

const [url, doctorToken, patientToken] = process.argv.slice(2);
const TIMEOUT = 5000;

function connect(token, transports = ["websocket"]) {
  const socket = io(url, { auth: { token }, transports, reconnection: false, timeout: TIMEOUT });
  return new Promise((resolve, reject) => {
    socket.once("connect", () => resolve(socket));
    socket.once("connect_error", (err) => reject(new Error(`connect_error ${JSON.stringify(err.data)}`)));
  });
}

function call(socket, event, payload) {
  return socket.timeout(TIMEOUT).emitWithAck(event, payload).then((ack) => {
    if (!ack.ok) throw new Error(`${event} failed: ${JSON.stringify(ack.error)}`);
    return ack;
  });
}

function next(socket, event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${TIMEOUT} ms`)), TIMEOUT);
    socket.once(event, (data) => { clearTimeout(timer); resolve(data); });
  });
}

async function refused() {
  try {
    await connect("not-a-token");
    return null;
  } catch (err) {
    return err.message;
  }
}

const result = {};
const doctor = await connect(doctorToken);
const patient = await connect(patientToken, ["polling", "websocket"]);
const opened = await call(doctor, "conversation:open", { member_ids: [process.argv[5]] });
const conversationId = opened.conversation.id;

const received = next(doctor, "message:new");
const sent = await call(patient, "message:send", { conversation_id: conversationId, client_id: "js-1", body: "from js" });
result.sent_seq = sent.message.seq;
result.doctor_received = (await received).message.body;

patient.disconnect();
await call(doctor, "message:send", { conversation_id: conversationId, client_id: "js-2", body: "while away" });

patient.connect();
await new Promise((resolve) => patient.once("connect", resolve));
const synced = await call(patient, "sync", { cursors: { [conversationId]: result.sent_seq } });
result.synced = synced.messages.map((m) => m.body);
result.refusal = await refused();

doctor.disconnect();
patient.disconnect();
console.log(JSON.stringify(result));
