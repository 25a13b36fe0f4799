import { io, type ManagerOptions, type Socket, type SocketOptions } from "socket.io-client";

import { HubError } from "./errors.js";
import type {
  Appointment,
  Attachment,
  ClientEvent,
  ClientEvents,
  Conversation,
  InboxItem,
  Me,
  Message,
  Notification,
  Pool,
  Route,
  ServerEvent,
  ServerEvents,
  SyncAck,
} from "./protocol.js";
import { MemoryStorage, type Storage } from "./storage.js";
import { type Store, Writable } from "./store.js";

/**
 * `connecting`: no socket yet, or trying to reach the hub. `syncing`: connected,
 * catching up (sync, then the outbox). `online`: caught up, live. `offline`: the
 * connection dropped; the client reconnects by itself. `unauthorized`: the hub refused
 * the token; nothing is retried until `connect()`. `closed`: `close()` or `signOut()`.
 */
export type ConnectionState = "connecting" | "syncing" | "online" | "offline" | "unauthorized" | "closed";

export interface Status {
  state: ConnectionState;
  /** Why the client is `unauthorized` or `offline`, when the hub said. */
  error?: HubError;
  /** Set when the hub ended the session (`session:ended`). */
  ended?: "token_expired" | "revoked";
}

export interface HubClientOptions {
  /** The hub's origin, e.g. `https://hub.clinic.example`. */
  url: string;
  /** A JWT for this person; called at each connection and before the token expires. */
  getToken: () => string | Promise<string>;
  /** Where the outbox, cursors and lists live; in memory by default. */
  storage?: Storage;
  /** `false` on a shared device: nothing is written to `storage`, only kept in memory. */
  persist?: boolean;
  /** How long to wait for each answer, in ms (default 15000; above the hub's store timeout). */
  ackTimeout?: number;
  /** Messages kept in storage per conversation (default 200; older ones load from the hub). */
  keep?: number;
  /** Passed to socket.io-client (transports, reconnection delays...). */
  socket?: Partial<ManagerOptions & SocketOptions>;
  /** Start connecting at once (default true); otherwise call `connect()`. */
  autoConnect?: boolean;
}

/** A message of the outbox: sent by this person, not yet stored by the hub. */
export interface OutgoingMessage {
  client_id: string;
  conversation_id: string;
  sender_id: string;
  body: string;
  attachment_ids: string[];
  visibility: "all" | "staff";
  created_at: string;
  status: "pending" | "failed";
  error?: { code: string; message: string; retryable: boolean };
}

/** What a conversation's view shows: stored messages by seq, then the outbox's. */
export type ChatMessage = (Message & { status: "sent" }) | OutgoingMessage;

export interface ConversationView extends Conversation {
  /** Messages after this person's read cursor, not sent by them. */
  unread: number;
  last_message?: Message;
  /** Who is typing now: user id to name. */
  typing: Record<string, string>;
}

export interface UploadOptions {
  name: string;
  /** Called with the fraction sent, 0 to 1. */
  onProgress?: (fraction: number) => void;
  signal?: AbortSignal;
}

interface Thread {
  meta: Conversation;
  messages: Map<number, Message>;
  /** Every message older than the oldest held has been loaded. */
  complete: boolean;
  view: Writable<ChatMessage[]>;
  notes: Writable<Message[]>;
}

interface Saved {
  meta: Conversation;
  messages: Message[];
  complete: boolean;
}

const UPLOAD_TIMEOUT_MS = 10 * 60 * 1000; // 20 MiB at 300 kbit/s
const TYPING_MS = 6000; // a typing line without news for this long is stale
const SYNC_PAGES = 1000; // at most 500,000 messages in one catch-up
const OWNER = "owner";
const OUTBOX = "outbox";
const CURSORS = "cursors";
const LISTS = "lists";
const THREAD = "conversation:";

/** The hub, as one person on one device sees it. */
export class HubClient {
  readonly status = new Writable<Status>({ state: "connecting" });
  readonly me = new Writable<Me | null>(null);
  /** What the hub said of this session (`session:me`): who, and the console's idle time. */
  readonly session = new Writable<{ user: Me; idle_timeout: number } | null>(null);
  readonly conversations = new Writable<ConversationView[]>([]);
  readonly notifications = new Writable<{ items: Notification[]; unread: number }>({ items: [], unread: 0 });
  readonly appointments = new Writable<Appointment[]>([]);
  readonly presence = new Writable<Record<string, boolean>>({});
  /** Uploads of this person and their state (`attachment:updated`). */
  readonly uploads = new Writable<Record<string, Attachment>>({});
  /** Messages not yet stored by the hub, oldest first: `pending`, or `failed` with the hub's error. */
  readonly outbox = new Writable<OutgoingMessage[]>([]);
  /** The clinic's people: the pools they work in. */
  readonly pools = new Writable<Pool[]>([]);

  private readonly options: Required<Pick<HubClientOptions, "ackTimeout" | "keep" | "persist">> & HubClientOptions;
  private readonly storage: Storage;
  private socket: Socket | null = null;
  private token = "";
  private owner = "";
  private loaded: Promise<void> | null = null;
  private readonly threads = new Map<string, Thread>();
  private queue: OutgoingMessage[] = [];
  private cursors: Record<string, number> = {};
  private changes: Record<string, number> = {};
  private readonly typingNow = new Map<string, Map<string, { name: string; timer: ReturnType<typeof setTimeout> }>>();
  private readonly inboxes = new Map<string, { state: "unclaimed" | "mine" | "all"; store: Writable<InboxItem[]> }>();
  private flushing: Promise<void> | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private retryDelay = 1000;
  private writes: Promise<void> = Promise.resolve();
  private dirty = new Set<string>();
  private closed = false;
  private readonly listeners = new Map<string, Set<(payload: never) => void>>();

  constructor(options: HubClientOptions) {
    this.options = { ackTimeout: 15000, keep: 200, persist: true, ...options };
    this.storage = this.options.persist ? (options.storage ?? new MemoryStorage()) : new MemoryStorage();
    if (options.autoConnect !== false) void this.connect();
  }

  // -- connection -----------------------------------------------------------------------

  /** Connect (again): after `unauthorized`, once `getToken` has a new token. */
  async connect(): Promise<void> {
    if (this.closed) throw new HubError("disconnected", "this client is closed");
    this.status.set({ state: "connecting" });
    await this.load();
    if (this.socket) {
      this.socket.connect();
      return;
    }
    const socket = io(this.options.url, {
      // Called before every attempt: a reconnect after hours uses a fresh token.
      auth: (callback: (data: object) => void) => {
        void this.freshToken().then(
          (token) => callback({ token }),
          () => callback({ token: this.token }),
        );
      },
      reconnectionDelayMax: 10000,
      ...this.options.socket,
    });
    this.socket = socket;
    socket.on("connect", () => void this.caughtUp());
    socket.on("disconnect", (reason) => {
      if (this.closed) return;
      this.status.set({ ...this.status.get(), state: "offline" });
      // The hub sent this socket away (its session ended): a new token may be welcome.
      if (reason === "io server disconnect") socket.connect();
    });
    socket.on("connect_error", (error: Error & { data?: { code?: string; message?: string } }) => {
      const code = error.data?.code;
      if (code === "unauthorized") {
        this.status.set({ ...this.status.get(), state: "unauthorized", error: HubError.from(error.data) });
      } else if (code === "unavailable") {
        // The hub could not check the session: the official client does not retry this.
        this.status.set({ state: "offline", error: HubError.from(error.data) });
        setTimeout(() => {
          if (!this.closed && !socket.connected && this.status.get().state === "offline") socket.connect();
        }, 2000 + Math.random() * 2000);
      } else {
        this.status.set({ state: "offline", error: new HubError("disconnected", error.message) });
      }
    });
    socket.on("server:draining", (_notice: unknown, ack?: () => void) => ack?.());
    socket.on("session:expiring", () => void this.refreshToken());
    socket.on("session:ended", ({ reason }: ServerEvents["session:ended"]) => {
      this.status.set({ ...this.status.get(), ended: reason });
    });
    socket.on("message:new", ({ message }: ServerEvents["message:new"]) => this.received([message], true));
    socket.on("message:edited", ({ message }: ServerEvents["message:edited"]) => this.received([message], false));
    socket.on("message:retracted", ({ message }: ServerEvents["message:retracted"]) => this.received([message], false));
    socket.on("note:new", ({ note }: ServerEvents["note:new"]) => this.noted([note]));
    socket.on("message:read", (event: ServerEvents["message:read"]) => this.readBy(event));
    socket.on("typing", (event: ServerEvents["typing"]) => this.typed(event));
    socket.on("presence", ({ user_id, online }: ServerEvents["presence"]) => {
      this.presence.set({ ...this.presence.get(), [user_id]: online });
    });
    socket.on("notification:new", ({ notification }: ServerEvents["notification:new"]) => {
      const { items, unread } = this.notifications.get();
      const known = items.some((n) => n.id === notification.id);
      this.notifications.set({
        items: [notification, ...items.filter((n) => n.id !== notification.id)],
        unread: unread + (known || notification.read_at ? 0 : 1),
      });
      this.save(LISTS);
    });
    socket.on("notification:read", ({ ids }: ServerEvents["notification:read"]) => this.markedRead(ids));
    socket.on("appointment:updated", ({ appointment }: ServerEvents["appointment:updated"]) => {
      this.appointments.set(sortAppointments([appointment, ...this.appointments.get().filter((a) => a.id !== appointment.id)]));
      this.save(LISTS);
    });
    socket.on("attachment:updated", ({ attachment }: ServerEvents["attachment:updated"]) => {
      this.uploads.set({ ...this.uploads.get(), [attachment.id]: attachment });
    });
    socket.on("inbox:updated", (event: ServerEvents["inbox:updated"]) => {
      void this.inboxChanged(event.pool_id);
      // A conversation handed to this person joins their list.
      void this.loadConversations().catch(() => undefined);
    });
    socket.onAny((event: string, payload: unknown) => {
      for (const listener of this.listeners.get(event) ?? []) listener(payload as never);
    });
  }

  /** Disconnect and stop; what is stored stays (the outbox goes out next time). */
  async close(): Promise<void> {
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.socket?.disconnect();
    this.socket = null;
    this.status.set({ state: "closed" });
    await this.writes;
  }

  /** Forget everything: the socket closes and the storage is wiped (a shared device). */
  async signOut(): Promise<void> {
    await this.close();
    await this.storage.clear();
    this.reset();
  }

  /** Hear a server event (typed); returns what stops hearing it. */
  on<E extends ServerEvent>(event: E, listener: (payload: ServerEvents[E]) => void): () => void {
    const set = this.listeners.get(event) ?? new Set();
    set.add(listener as (payload: never) => void);
    this.listeners.set(event, set);
    return () => set.delete(listener as (payload: never) => void);
  }

  /** Any client event, typed; a refusal throws a HubError with the hub's code. */
  async request<E extends ClientEvent>(event: E, payload: ClientEvents[E]["payload"]): Promise<ClientEvents[E]["ack"]> {
    const socket = this.socket;
    if (!socket?.connected) throw new HubError("disconnected", "not connected to the hub");
    let answer: { ok: boolean; error?: { code: string; message: string } };
    try {
      answer = await socket.timeout(this.options.ackTimeout).emitWithAck(event, payload);
    } catch {
      throw new HubError(socket.connected ? "timeout" : "disconnected", `no answer to ${event}`);
    }
    if (!answer.ok) throw HubError.from(answer.error);
    return answer as ClientEvents[E]["ack"];
  }

  private async freshToken(): Promise<string> {
    this.token = await this.options.getToken();
    const owner = ownerOf(this.options.url, this.token);
    if (owner !== this.owner) await this.load(owner);
    return this.token;
  }

  private async refreshToken(): Promise<void> {
    try {
      const token = await this.options.getToken();
      if (ownerOf(this.options.url, token) !== this.owner) return; // another person: reconnect instead
      await this.request("session:refresh", { token });
      this.token = token;
    } catch {
      // Kept as it is: the session ends, and the reconnect asks getToken again.
    }
  }

  // After each (re)connect: who I am, what I missed, then what I still have to send.
  private async caughtUp(): Promise<void> {
    const socket = this.socket;
    this.status.set({ state: "syncing" });
    this.retryDelay = 1000;
    try {
      const session = await this.request("session:me", {});
      this.me.set(session.user);
      this.session.set({ user: session.user, idle_timeout: session.idle_timeout });
      await this.loadConversations();
      await this.sync();
      await this.flush();
      await Promise.all([this.loadLists(), this.loadPresence(), this.loadPools()]);
      if (socket === this.socket && socket?.connected) {
        this.status.set({ state: "online" });
        await this.flush(); // what was sent while the lists loaded
      }
    } catch (error) {
      // The connection went meanwhile: the next connect starts over.
      if (socket?.connected) this.status.set({ state: "offline", error: HubError.from(error) });
    }
  }

  private async loadConversations(): Promise<void> {
    const { conversations } = await this.request("conversation:list", {});
    for (const meta of conversations) {
      const thread = this.thread(meta.id);
      thread.meta = { ...thread.meta, ...meta };
      this.save(THREAD + meta.id);
    }
    this.publishConversations();
  }

  /** Catch up on every conversation: new messages, then edits, retractions and expiries. */
  private async sync(): Promise<void> {
    for (let page = 0; page < SYNC_PAGES; page += 1) {
      const answer: SyncAck = await this.request("sync", { cursors: { ...this.cursors }, changes: { ...this.changes } });
      this.applySync(answer);
      if (!answer.has_more) return;
    }
  }

  private applySync(answer: SyncAck): void {
    for (const gone of answer.expired) {
      const thread = this.thread(gone.conversation_id);
      for (const seq of gone.seqs) thread.messages.delete(seq);
      this.changed(gone.conversation_id, gone.change);
      this.touch(thread);
    }
    this.received(answer.changed, false);
    this.received(answer.messages, false);
    // Each conversation's page is a contiguous run after its cursor: the cursor moves to its end.
    for (const message of answer.messages) {
      this.cursors[message.conversation_id] = Math.max(this.cursors[message.conversation_id] ?? 0, message.seq);
    }
    this.save(CURSORS);
  }

  private received(messages: Message[], live: boolean): void {
    const touched = new Set<Thread>();
    let gap = false;
    for (const message of [...messages].sort((a, b) => a.seq - b.seq)) {
      const thread = this.thread(message.conversation_id);
      if (message.expired) thread.messages.delete(message.seq);
      else thread.messages.set(message.seq, message);
      thread.meta = { ...thread.meta, last_seq: Math.max(thread.meta.last_seq, message.seq) };
      if (message.change) this.changed(message.conversation_id, message.change);
      this.settled(message);
      if (live) {
        this.typingEnds(message.conversation_id, message.sender_id);
        // A live message right after the cursor moves it; one further on means a gap
        // (a message still on its way, or missed): sync fills it.
        const cursor = this.cursors[message.conversation_id];
        if (cursor !== undefined && message.seq === cursor + 1) this.cursors[message.conversation_id] = message.seq;
        else if (cursor !== undefined && message.seq > cursor + 1) gap = true;
      }
      touched.add(thread);
    }
    for (const thread of touched) this.touch(thread);
    if (live) this.save(CURSORS);
    if (gap && this.status.get().state === "online") void this.sync().catch(() => undefined);
  }

  // A stored message of mine that is still in the outbox (its ack was lost): done.
  private settled(message: Message): void {
    const index = this.queue.findIndex((m) => m.client_id === message.client_id && m.sender_id === message.sender_id);
    if (index < 0) return;
    this.queue.splice(index, 1);
    this.save(OUTBOX);
  }

  private noted(notes: Message[]): void {
    for (const note of notes) {
      const thread = this.thread(note.conversation_id);
      const list = [...thread.notes.get().filter((n) => n.seq !== note.seq), note].sort((a, b) => a.seq - b.seq);
      thread.notes.set(list);
      this.settled(note);
      this.touch(thread);
    }
  }

  private changed(conversationId: string, change: number): void {
    this.changes[conversationId] = Math.max(this.changes[conversationId] ?? 0, change);
    this.save(CURSORS);
  }

  // -- the outbox -----------------------------------------------------------------------

  /**
   * Send a message: it is in the outbox at once (`pending`), stored before it goes out,
   * and sent (again after any disconnect or restart, with the same `client_id`) until
   * the hub stores it (`sent`, with its seq) or refuses it for good (`failed`).
   */
  send(
    conversationId: string,
    body: string,
    options: { attachments?: string[]; visibility?: "all" | "staff" } = {},
  ): OutgoingMessage {
    const message: OutgoingMessage = {
      client_id: newId(),
      conversation_id: conversationId,
      sender_id: this.me.get()?.id ?? subjectOf(this.token) ?? "",
      body,
      attachment_ids: options.attachments ?? [],
      visibility: options.visibility ?? "all",
      created_at: new Date().toISOString(),
      status: "pending",
    };
    this.queue.push(message);
    this.touch(this.thread(conversationId));
    this.save(OUTBOX);
    void this.flushSoon();
    return message;
  }

  /** Send a failed message again (same client_id). */
  retry(clientId: string): void {
    const message = this.queue.find((m) => m.client_id === clientId);
    if (!message || message.status !== "failed") return;
    message.status = "pending";
    delete message.error;
    this.touch(this.thread(message.conversation_id));
    this.save(OUTBOX);
    void this.flushSoon();
  }

  /** Give up on a failed message: it leaves the outbox. */
  discard(clientId: string): void {
    const index = this.queue.findIndex((m) => m.client_id === clientId && m.status === "failed");
    if (index < 0) return;
    const [message] = this.queue.splice(index, 1);
    this.touch(this.thread(message!.conversation_id));
    this.save(OUTBOX);
  }

  /** Resolves once everything changed so far is in storage. */
  async persisted(): Promise<void> {
    await Promise.resolve();
    await this.writes;
  }

  private async flushSoon(): Promise<void> {
    await this.writes; // stored before it goes out: a reload meanwhile still has it
    const state = this.status.get().state;
    if (state === "online") await this.flush();
  }

  // One at a time, oldest first: a conversation's messages are stored in the order sent.
  private flush(): Promise<void> {
    this.flushing ??= this.drain().finally(() => {
      this.flushing = null;
      // Sent while this drain was ending: not left waiting for the next reconnect.
      const more = this.queue.some((m) => m.status === "pending");
      if (more && !this.retryTimer && this.status.get().state === "online") void this.flush();
    });
    return this.flushing;
  }

  private async drain(): Promise<void> {
    for (;;) {
      const next = this.queue.find((m) => m.status === "pending");
      if (!next || !(await this.deliver(next))) return;
    }
  }

  // False when the hub could not take it now: the flush stops, to resume in order later.
  private async deliver(message: OutgoingMessage): Promise<boolean> {
    let ack: ClientEvents["message:send"]["ack"];
    try {
      ack = await this.request("message:send", {
        conversation_id: message.conversation_id,
        client_id: message.client_id,
        body: message.body,
        attachment_ids: message.attachment_ids,
        visibility: message.visibility,
      });
    } catch (error) {
      const refusal = HubError.from(error);
      if (refusal.retryable) {
        this.retryLater();
        return false;
      }
      message.status = "failed";
      message.error = refusal.toJSON();
      this.touch(this.thread(message.conversation_id));
      this.save(OUTBOX);
      return true;
    }
    if ("note" in ack) this.noted([ack.note]);
    else this.received([ack.message], false); // and out of the outbox
    return true;
  }

  private retryLater(): void {
    if (this.retryTimer || this.closed) return;
    const delay = this.retryDelay;
    this.retryDelay = Math.min(this.retryDelay * 2, 30000);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      if (this.status.get().state === "online") void this.flush().catch(() => undefined);
    }, delay);
  }

  // -- conversations --------------------------------------------------------------------

  /** One conversation's messages, oldest first, with the outbox's at the end. */
  messages(conversationId: string): Store<ChatMessage[]> {
    return this.thread(conversationId).view;
  }

  /** One conversation's staff-only notes (the clinic's people); loads them once. */
  notes(conversationId: string): Store<Message[]> {
    const thread = this.thread(conversationId);
    if (!thread.notes.get().length && this.socket?.connected) {
      void this.request("note:history", { conversation_id: conversationId }).then(
        ({ notes }) => this.noted(notes),
        () => undefined,
      );
    }
    return thread.notes;
  }

  /** Whether older messages than those held may exist (see `loadOlder`). */
  hasOlder(conversationId: string): boolean {
    return !this.thread(conversationId).complete;
  }

  /** Load a page of older messages; resolves false once there are none left. */
  async loadOlder(conversationId: string, limit = 50): Promise<boolean> {
    const thread = this.thread(conversationId);
    if (thread.complete) return false;
    const held = [...thread.messages.keys()];
    const oldest = held.length ? Math.min(...held) : undefined;
    const page = await this.request("message:history", {
      conversation_id: conversationId,
      limit,
      ...(oldest !== undefined ? { before_seq: oldest } : {}),
    });
    for (const message of page.messages) if (!message.expired) thread.messages.set(message.seq, message);
    // The newest page, with nothing held before: the cursor can start at its end.
    if (oldest === undefined && page.messages.length && this.cursors[conversationId] === undefined) {
      this.cursors[conversationId] = page.messages[page.messages.length - 1]!.seq;
      this.save(CURSORS);
    }
    thread.complete = !page.has_more;
    this.touch(thread);
    return page.has_more;
  }

  /** Open (or find) the conversation with these people; patients pass a pool instead. */
  async open(to: { member_ids?: string[]; pool_id?: string; appointment_id?: string }): Promise<Conversation> {
    const { conversation } = await this.request("conversation:open", to);
    const thread = this.thread(conversation.id);
    thread.meta = { ...thread.meta, ...conversation };
    this.save(THREAD + conversation.id);
    this.publishConversations();
    return conversation;
  }

  /** Mark read up to `seq` (default: the newest held). */
  async markRead(conversationId: string, seq?: number): Promise<void> {
    const thread = this.thread(conversationId);
    const upto = seq ?? thread.meta.last_seq;
    if (!upto || upto <= (thread.meta.read_seq ?? 0)) return;
    thread.meta = { ...thread.meta, read_seq: upto };
    this.touch(thread);
    await this.request("message:read", { conversation_id: conversationId, seq: upto });
  }

  async edit(conversationId: string, seq: number, body: string): Promise<Message> {
    const { message } = await this.request("message:edit", { conversation_id: conversationId, seq, body });
    this.received([message], false);
    return message;
  }

  async retract(conversationId: string, seq: number, reason: string): Promise<Message> {
    const { message } = await this.request("message:retract", { conversation_id: conversationId, seq, reason });
    this.received([message], false);
    return message;
  }

  /** Tell the others this person is typing (or stopped); not stored. */
  typing(conversationId: string, typing: boolean): void {
    if (this.status.get().state === "online") {
      void this.request("typing", { conversation_id: conversationId, typing }).catch(() => undefined);
    }
  }

  // The message a typing line announced has come: the line goes with it.
  private typingEnds(conversationId: string, userId: string): void {
    const who = this.typingNow.get(conversationId);
    const was = who?.get(userId);
    if (!who || !was) return;
    clearTimeout(was.timer);
    who.delete(userId);
    this.publishConversations();
  }

  private typed({ conversation_id, user_id, name, typing }: ServerEvents["typing"]): void {
    const who = this.typingNow.get(conversation_id) ?? new Map();
    this.typingNow.set(conversation_id, who);
    const was = who.get(user_id);
    if (was) clearTimeout(was.timer);
    who.delete(user_id);
    if (typing) {
      const timer = setTimeout(() => {
        who.delete(user_id);
        this.publishConversations();
      }, TYPING_MS);
      who.set(user_id, { name: name ?? user_id, timer });
    }
    this.publishConversations();
  }

  private readBy({ conversation_id, user_id, seq }: ServerEvents["message:read"]): void {
    if (user_id !== this.me.get()?.id) return; // others' read receipts: request them with on()
    const thread = this.thread(conversation_id);
    if (seq > (thread.meta.read_seq ?? 0)) {
      thread.meta = { ...thread.meta, read_seq: seq };
      this.touch(thread);
    }
  }

  // -- notifications, appointments, people ----------------------------------------------

  async acknowledge(ids: string[]): Promise<void> {
    if (!ids.length) return;
    await this.request("notification:ack", { ids });
    this.markedRead(ids);
  }

  private markedRead(ids: string[]): void {
    const now = new Date().toISOString();
    let { items, unread } = this.notifications.get();
    items = items.map((n) => {
      if (!ids.includes(n.id) || n.read_at) return n;
      unread = Math.max(0, unread - 1);
      return { ...n, read_at: now };
    });
    this.notifications.set({ items, unread });
    this.save(LISTS);
  }

  private async loadLists(): Promise<void> {
    const [notes, appointments] = await Promise.all([
      this.request("notification:list", { limit: 50 }),
      this.request("appointment:list", { limit: 100 }),
    ]);
    this.notifications.set({ items: notes.notifications, unread: notes.unread_count });
    this.appointments.set(sortAppointments(appointments.appointments));
    this.save(LISTS);
  }

  private async loadPresence(): Promise<void> {
    const me = this.me.get()?.id;
    const people = new Set<string>();
    for (const thread of this.threads.values()) for (const id of thread.meta.member_ids) if (id !== me) people.add(id);
    const user_ids = [...people].slice(0, 200);
    if (!user_ids.length) return;
    try {
      const { online } = await this.request("presence:query", { user_ids });
      this.presence.set({ ...this.presence.get(), ...online });
    } catch {
      // Presence is a nicety: the live `presence` events still come.
    }
  }

  private async loadPools(): Promise<void> {
    if (this.me.get()?.role === "patient") return;
    const { pools } = await this.request("inbox:pools", {});
    this.pools.set(pools);
    for (const poolId of this.inboxes.keys()) void this.inboxChanged(poolId);
  }

  // -- the inbox (the clinic's people) --------------------------------------------------

  /** A pool's conversations, kept current with `inbox:updated` while subscribed. */
  inbox(poolId: string, state: "unclaimed" | "mine" | "all" = "unclaimed"): Store<InboxItem[]> {
    const known = this.inboxes.get(poolId);
    if (known && known.state === state) return known.store;
    const entry = { state, store: known?.store ?? new Writable<InboxItem[]>([]) };
    this.inboxes.set(poolId, entry);
    void this.inboxChanged(poolId);
    return entry.store;
  }

  claim(conversationId: string): Promise<Route> {
    return this.request("conversation:claim", { conversation_id: conversationId }).then((a) => a.route);
  }

  release(conversationId: string): Promise<Route> {
    return this.request("conversation:release", { conversation_id: conversationId }).then((a) => a.route);
  }

  transfer(conversationId: string, to: { to_user?: string; to_pool?: string; note?: string }): Promise<Route> {
    return this.request("conversation:transfer", { conversation_id: conversationId, ...to }).then((a) => a.route);
  }

  private async inboxChanged(poolId: string): Promise<void> {
    const entry = this.inboxes.get(poolId);
    if (!entry || !this.socket?.connected) return;
    try {
      const { conversations } = await this.request("inbox:list", { pool_id: poolId, state: entry.state });
      entry.store.set(conversations);
    } catch {
      // Kept as it was; the next change or reconnect lists it again.
    }
  }

  // -- attachments and push -------------------------------------------------------------

  /**
   * Upload a file to a conversation (over HTTP, not the socket). Resolves with the
   * attachment once the hub has checked it (or `pending`: watch `uploads`); send it with
   * `send(..., {attachments: [id]})`. Abort with `options.signal`.
   */
  async upload(conversationId: string, file: Blob | ArrayBuffer | Uint8Array, options: UploadOptions): Promise<Attachment> {
    const url = this.at(`/api/v1/conversations/${encodeURIComponent(conversationId)}/attachments`);
    const headers = {
      authorization: `Bearer ${await this.freshToken()}`,
      "content-disposition": `attachment; filename*=UTF-8''${encodeURIComponent(options.name)}`,
    };
    const { status, body } = await send(url, headers, file, options);
    const answer = body as { ok?: boolean; attachment?: Attachment; error?: { code: string; message: string } };
    if (!answer.ok || !answer.attachment) {
      throw new HubError((answer.error?.code as HubError["code"]) ?? "internal", answer.error?.message ?? `HTTP ${status}`, status);
    }
    this.uploads.set({ ...this.uploads.get(), [answer.attachment.id]: answer.attachment });
    return answer.attachment;
  }

  /** A short-lived link to an attachment (or its thumbnail) for an `<img src>` or a download. */
  async attachmentUrl(attachmentId: string, thumbnail = false): Promise<{ url: string; path: string; expires_at: string }> {
    const { url, path, expires_at } = await this.request("attachment:url", { id: attachmentId, thumbnail });
    return { url, path, expires_at };
  }

  /** Register this browser for Web Push: a service worker registration and the hub's key. */
  async registerWebPush(registration: ServiceWorkerRegistration, locale?: string): Promise<string> {
    const response = await fetch(this.at("/api/v1/push/vapid-public-key"), {
      signal: AbortSignal.timeout(this.options.ackTimeout),
    });
    const key = (await response.json()) as { ok: boolean; key?: string };
    if (!key.ok || !key.key) throw new HubError("unavailable", "Web Push is not set up on this hub");
    const subscription =
      (await registration.pushManager.getSubscription()) ??
      (await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: base64url(key.key) }));
    const json = subscription.toJSON() as { endpoint: string; keys: { p256dh: string; auth: string } };
    const { device } = await this.request("push:register", {
      kind: "webpush",
      subscription: { endpoint: json.endpoint, keys: json.keys },
      ...(locale ? { locale } : {}),
    });
    return device.id;
  }

  /** Register a phone's FCM token (Android, or iOS through FCM). */
  async registerFcm(token: string, platform: "android" | "ios", locale?: string): Promise<string> {
    const { device } = await this.request("push:register", { kind: "fcm", token, platform, ...(locale ? { locale } : {}) });
    return device.id;
  }

  async unregisterPush(deviceId: string): Promise<void> {
    await this.request("push:unregister", { device_id: deviceId });
  }

  // -- local state and storage ----------------------------------------------------------

  // A path on the hub's origin.
  private at(path: string): string {
    return originOf(this.options.url) + path;
  }

  private thread(conversationId: string): Thread {
    let thread = this.threads.get(conversationId);
    if (!thread) {
      thread = {
        meta: { id: conversationId, member_ids: [], members: [], appointment_id: null, created_at: "", last_seq: 0, read_seq: 0 },
        messages: new Map(),
        complete: false,
        view: new Writable<ChatMessage[]>([]),
        notes: new Writable<Message[]>([]),
      };
      this.threads.set(conversationId, thread);
    }
    return thread;
  }

  // A thread changed: its view, the conversation list, and its place in storage.
  private touch(thread: Thread): void {
    const stored = [...thread.messages.values()].sort((a, b) => a.seq - b.seq);
    const outgoing = this.queue.filter((m) => m.conversation_id === thread.meta.id && m.visibility === "all");
    thread.view.set([...stored.map((m) => ({ ...m, status: "sent" as const })), ...outgoing.map((m) => ({ ...m }))]);
    this.save(THREAD + thread.meta.id);
    this.publishConversations();
  }

  private publishConversations(): void {
    const me = this.me.get()?.id;
    const views: ConversationView[] = [];
    for (const thread of this.threads.values()) {
      if (!thread.meta.created_at) continue; // known from a message only, until listed
      const read = thread.meta.read_seq ?? 0;
      const held = [...thread.messages.values()];
      const last = held.reduce<Message | undefined>((a, m) => (!a || m.seq > a.seq ? m : a), undefined);
      const newest = held.reduce((a, m) => Math.max(a, m.seq), read);
      const unheld = Math.max(0, thread.meta.last_seq - newest);
      const unread = held.filter((m) => m.seq > read && m.sender_id !== me).length + unheld;
      const typing: Record<string, string> = {};
      for (const [id, { name }] of this.typingNow.get(thread.meta.id) ?? []) typing[id] = name;
      views.push({ ...thread.meta, unread, typing, ...(last ? { last_message: last } : {}) });
    }
    views.sort((a, b) => (b.last_message?.created_at ?? b.created_at).localeCompare(a.last_message?.created_at ?? a.created_at));
    this.conversations.set(views);
  }

  // Loads what storage holds for this person, after wiping anyone else's.
  private load(owner?: string): Promise<void> {
    if (owner === undefined && this.loaded) return this.loaded;
    this.loaded = (async () => {
      if (owner === undefined) {
        this.token = await this.options.getToken();
        owner = ownerOf(this.options.url, this.token);
      }
      await this.writes;
      const stored = await this.storage.get(OWNER);
      if (stored !== owner) {
        // Someone else's data (another person, clinic or hub): never shown, never sent.
        await this.storage.clear();
        this.reset();
        await this.storage.set(OWNER, owner);
      }
      this.owner = owner;
      if (stored === owner) await this.restore();
      if (this.queue.length) this.save(OUTBOX);
    })();
    return this.loaded;
  }

  private async restore(): Promise<void> {
    // Stored first, then anything sent while storage was being read.
    const stored = ((await this.storage.get(OUTBOX)) as OutgoingMessage[] | undefined) ?? [];
    const ids = new Set(stored.map((m) => m.client_id));
    this.queue = [...stored, ...this.queue.filter((m) => !ids.has(m.client_id))];
    const cursors = (await this.storage.get(CURSORS)) as { cursors: Record<string, number>; changes: Record<string, number> } | undefined;
    this.cursors = cursors?.cursors ?? {};
    this.changes = cursors?.changes ?? {};
    const lists = (await this.storage.get(LISTS)) as
      | { notifications: { items: Notification[]; unread: number }; appointments: Appointment[] }
      | undefined;
    if (lists) {
      this.notifications.set(lists.notifications);
      this.appointments.set(lists.appointments);
    }
    for (const key of await this.storage.keys()) {
      if (!key.startsWith(THREAD)) continue;
      const saved = (await this.storage.get(key)) as Saved | undefined;
      if (!saved) continue;
      const thread = this.thread(saved.meta.id);
      thread.meta = saved.meta;
      thread.complete = saved.complete;
      for (const message of saved.messages) thread.messages.set(message.seq, message);
    }
    for (const thread of this.threads.values()) this.touch(thread);
  }

  private reset(): void {
    this.threads.clear();
    this.queue = [];
    this.outbox.set([]);
    this.cursors = {};
    this.changes = {};
    this.dirty.clear();
    this.me.set(null);
    this.session.set(null);
    this.conversations.set([]);
    this.notifications.set({ items: [], unread: 0 });
    this.appointments.set([]);
    this.presence.set({});
    this.uploads.set({});
    this.pools.set([]);
  }

  // Writes are batched and serialized: each key is written once per turn of the event loop.
  private save(key: string): void {
    if (key === OUTBOX) this.outbox.set(this.queue.map((m) => ({ ...m })));
    if (!this.owner) return; // nothing loaded yet: nothing of this person's to write
    const first = this.dirty.size === 0;
    this.dirty.add(key);
    if (!first) return;
    const owner = this.owner;
    this.writes = this.writes.then(async () => {
      await Promise.resolve();
      const keys = [...this.dirty];
      this.dirty.clear();
      if (owner !== this.owner) return;
      for (const name of keys) await this.storage.set(name, this.snapshot(name));
    }).catch((error: unknown) => {
      queueMicrotask(() => {
        throw error;
      });
    });
  }

  private snapshot(key: string): unknown {
    if (key === OUTBOX) return this.queue;
    if (key === CURSORS) return { cursors: this.cursors, changes: this.changes };
    if (key === LISTS) return { notifications: this.notifications.get(), appointments: this.appointments.get() };
    const thread = this.thread(key.slice(THREAD.length));
    const messages = [...thread.messages.values()].sort((a, b) => a.seq - b.seq);
    const kept = messages.slice(-this.options.keep);
    return { meta: thread.meta, messages: kept, complete: thread.complete && kept.length === messages.length } satisfies Saved;
  }
}

function sortAppointments(list: Appointment[]): Appointment[] {
  return [...list].sort((a, b) => a.start.localeCompare(b.start));
}

// Unique per message: time, then randomness (React Native may lack crypto).
function newId(): string {
  const bytes = new Uint8Array(10);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i += 1) bytes[i] = Math.floor(Math.random() * 256);
  return `c_${Date.now().toString(36)}_${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}

function claims(token: string): Record<string, unknown> {
  try {
    const part = token.split(".")[1] ?? "";
    const json = decodeURIComponent(
      [...atob(part.replace(/-/g, "+").replace(/_/g, "/"))].map((c) => `%${c.charCodeAt(0).toString(16).padStart(2, "0")}`).join(""),
    );
    return JSON.parse(json) as Record<string, unknown>;
  } catch {
    return {};
  }
}

function subjectOf(token: string): string | undefined {
  const sub = claims(token).sub;
  return typeof sub === "string" ? sub : undefined;
}

// Whose data this is: the hub, the clinic and the person (not verified: the hub does that).
function ownerOf(url: string, token: string): string {
  const { sub, tenant, iss } = claims(token);
  return JSON.stringify([originOf(url), String(iss ?? ""), String(tenant ?? "default"), String(sub ?? "")]);
}

// By hand: React Native's URL implements neither `origin` nor a base argument.
function originOf(url: string): string {
  return (/^[a-z][a-z0-9+.-]*:\/\/[^/?#]+/i.exec(url)?.[0] ?? url).toLowerCase();
}

function base64url(text: string): Uint8Array<ArrayBuffer> {
  const padded = text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4);
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}

// An upload with progress: XMLHttpRequest where there is one (browsers, React Native),
// fetch with a counting stream elsewhere (Node).
async function send(
  url: string,
  headers: Record<string, string>,
  file: Blob | ArrayBuffer | Uint8Array,
  options: UploadOptions,
): Promise<{ status: number; body: unknown }> {
  const total = file instanceof Blob ? file.size : file.byteLength;
  if (typeof XMLHttpRequest !== "undefined") {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", url);
      xhr.timeout = UPLOAD_TIMEOUT_MS;
      xhr.ontimeout = () => reject(new HubError("timeout", "the upload took too long"));
      for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
      xhr.upload.onprogress = (event) => options.onProgress?.(event.lengthComputable ? event.loaded / event.total : 0);
      xhr.onload = () => resolve({ status: xhr.status, body: parse(xhr.responseText) });
      xhr.onerror = () => reject(new HubError("disconnected", "the upload failed"));
      xhr.onabort = () => reject(new HubError("disconnected", "the upload was cancelled"));
      options.signal?.addEventListener("abort", () => xhr.abort());
      xhr.send(file instanceof Uint8Array ? new Blob([file as Uint8Array<ArrayBuffer>]) : file);
    });
  }
  const bytes = file instanceof Blob ? new Uint8Array(await file.arrayBuffer()) : new Uint8Array(file);
  const CHUNK = 64 * 1024;
  let sent = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (sent >= total) {
        controller.close();
        return;
      }
      const piece = bytes.subarray(sent, Math.min(total, sent + CHUNK));
      sent += piece.byteLength;
      controller.enqueue(piece);
      options.onProgress?.(sent / total);
    },
  });
  let response: Response;
  try {
    response = await fetch(url, {
      method: "POST",
      headers: { ...headers, "content-length": String(total) },
      body,
      duplex: "half",
      signal: AbortSignal.any([AbortSignal.timeout(UPLOAD_TIMEOUT_MS), ...(options.signal ? [options.signal] : [])]),
    } as RequestInit);
  } catch (error) {
    const aborted = options.signal?.aborted;
    throw new HubError("disconnected", aborted ? "the upload was cancelled" : `the upload failed: ${String(error)}`);
  }
  return { status: response.status, body: parse(await response.text()) };
}

function parse(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return {};
  }
}
