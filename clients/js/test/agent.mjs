// Drives HubClient instances for the Python tests (tests/e2e/test_sdk_e2e.py): one JSON
// command per line on stdin, one JSON answer per line on stdout ({id, ok, result} or
// {id, ok: false, error}). The tests start and kill the hubs; this process is a device
// (or several), whose storage outlives any one client, as a phone's does.
import { createInterface } from "node:readline";

import { HubClient, MemoryStorage } from "../dist/index.js";

const clients = new Map(); // name -> {client, token, tokens: number of getToken calls}
const storages = new Map(); // name -> MemoryStorage

function storage(name) {
  if (!storages.has(name)) storages.set(name, new MemoryStorage());
  return storages.get(name);
}

function the(name) {
  const entry = clients.get(name);
  if (!entry) throw new Error(`no client ${name}`);
  return entry;
}

// Resolves once `check(value)` holds for the store, or rejects after `timeout` ms.
function until(store, check, timeout, what) {
  return new Promise((resolve, reject) => {
    let stop = () => {};
    const timer = setTimeout(() => {
      stop();
      reject(new Error(`timed out waiting for ${what}: ${JSON.stringify(store.get()).slice(0, 2000)}`));
    }, timeout);
    stop = store.subscribe((value) => {
      if (!check(value)) return;
      clearTimeout(timer);
      queueMicrotask(() => stop());
      resolve(value);
    });
  });
}

const ops = {
  client({ name, url, token, storage: storageName, persist = true }) {
    const entry = { token, tokens: 0 };
    entry.client = new HubClient({
      url,
      getToken: () => {
        entry.tokens += 1;
        return entry.token;
      },
      storage: storage(storageName ?? name),
      persist,
      ackTimeout: 5000,
      socket: { transports: ["websocket"], reconnectionDelay: 100, reconnectionDelayMax: 300 },
    });
    clients.set(name, entry);
    return true;
  },
  // A reopened app, timed from its creation to online (storage read, connect, sync).
  async timed_client(args) {
    const started = performance.now();
    ops.client(args);
    const { client } = the(args.name);
    await until(client.status, (s) => s.state === "online", args.timeout ?? 60000, "online");
    const ms = performance.now() - started;
    let messages = 0;
    for (const view of client.conversations.get()) messages += client.messages(view.id).get().length;
    return { ms, messages };
  },
  async load_older({ name, conversation_id, limit }) {
    return the(name).client.loadOlder(conversation_id, limit);
  },
  retry({ name, client_id }) {
    the(name).client.retry(client_id);
    return true;
  },
  discard({ name, client_id }) {
    the(name).client.discard(client_id);
    return true;
  },
  async wait_failed({ name, count = 1, timeout = 10000 }) {
    const store = the(name).client.outbox;
    return until(store, (list) => list.filter((m) => m.status === "failed").length >= count, timeout, `${count} failed`);
  },
  async register_fcm({ name, token, platform }) {
    return the(name).client.registerFcm(token, platform);
  },
  token({ name, token }) {
    the(name).token = token;
    return the(name).tokens;
  },
  status({ name }) {
    const { client, tokens } = the(name);
    return { ...client.status.get(), error: client.status.get().error?.toJSON(), tokens, socket: client.socket?.id ?? null };
  },
  async wait({ name, state, timeout = 10000 }) {
    const { client } = the(name);
    await until(client.status, (s) => s.state === state, timeout, `state ${state}`);
    return ops.status({ name });
  },
  send({ name, conversation_id, body, attachments }) {
    return the(name).client.send(conversation_id, body, { attachments });
  },
  async persisted({ name }) {
    await the(name).client.persisted();
    return true;
  },
  pending({ name }) {
    return the(name).client.outbox.get();
  },
  messages({ name, conversation_id }) {
    return the(name).client.messages(conversation_id).get();
  },
  async wait_messages({ name, conversation_id, count, timeout = 10000 }) {
    const store = the(name).client.messages(conversation_id);
    return until(store, (list) => list.filter((m) => m.status === "sent").length >= count, timeout, `${count} messages`);
  },
  async wait_body({ name, conversation_id, seq, body, timeout = 10000 }) {
    const store = the(name).client.messages(conversation_id);
    await until(store, (list) => list.some((m) => m.seq === seq && m.body === body), timeout, `seq ${seq}: ${body}`);
    return true;
  },
  async wait_outbox_empty({ name, timeout = 10000 }) {
    await until(the(name).client.outbox, (list) => list.length === 0, timeout, "an empty outbox");
    return true;
  },
  conversations({ name }) {
    return the(name).client.conversations.get();
  },
  async wait_unread({ name, conversation_id, unread, timeout = 10000 }) {
    const store = the(name).client.conversations;
    return until(store, (list) => list.some((c) => c.id === conversation_id && c.unread === unread), timeout, `unread ${unread}`);
  },
  async request({ name, event, payload }) {
    return the(name).client.request(event, payload);
  },
  async mark_read({ name, conversation_id }) {
    await the(name).client.markRead(conversation_id);
    return true;
  },
  async edit({ name, conversation_id, seq, body }) {
    return the(name).client.edit(conversation_id, seq, body);
  },
  async upload({ name, conversation_id, size, file_name, cancel_at }) {
    const bytes = new Uint8Array(size);
    const progress = [];
    const controller = new AbortController();
    try {
      const attachment = await the(name).client.upload(conversation_id, bytes, {
        name: file_name,
        signal: controller.signal,
        onProgress: (fraction) => {
          progress.push(fraction);
          if (cancel_at !== undefined && fraction >= cancel_at) controller.abort();
        },
      });
      return { attachment, progress };
    } catch (error) {
      return { error: error.toJSON ? error.toJSON() : String(error), progress };
    }
  },
  async close({ name }) {
    await the(name).client.close();
    clients.delete(name);
    return true;
  },
  async sign_out({ name }) {
    await the(name).client.signOut();
    clients.delete(name);
    return true;
  },
  async storage_keys({ storage: storageName }) {
    return storage(storageName).keys();
  },
};

const lines = createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  const { id, op, args } = JSON.parse(line);
  let answer;
  try {
    answer = { id, ok: true, result: (await ops[op](args ?? {})) ?? null };
  } catch (error) {
    answer = { id, ok: false, error: error instanceof Error ? `${error.name}: ${error.message}` : String(error) };
  }
  process.stdout.write(`${JSON.stringify(answer)}\n`);
});
lines.on("close", async () => {
  for (const { client } of clients.values()) await client.close();
  process.exit(0);
});
