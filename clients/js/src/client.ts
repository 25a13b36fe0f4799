import { io, type ManagerOptions, type Socket, type SocketOptions } from "socket.io-client";

import { HubError } from "./errors.js";
import { base64url, newClientId, originOf, ownerOf, subjectOf } from "./identity.js";
import {
  type ChatMessage,
  type ConversationView,
  CURSORS,
  LocalState,
  type OutgoingMessage,
  OUTBOX,
  THREAD,
} from "./local.js";
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
import { postFile, type UploadOptions } from "./transfer.js";

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

export type { ChatMessage, ConversationView, OutgoingMessage } from "./local.js";
export type { UploadOptions } from "./transfer.js";

const SYNC_PAGES = 1000; // at most 500,000 messages in one catch-up

/** The hub, as one person on one device sees it. */
export class HubClient {
  readonly status: Store<Status>;
  readonly me: Store<Me | null>;
  /** What the hub said of this session (`session:me`): who, and the console's idle time. */
  readonly session: Store<{ user: Me; idle_timeout: number } | null>;
  /** Each conversation with its unread count, last message and who is typing. */
  readonly conversations: Store<ConversationView[]>;
  readonly notifications: Store<{ items: Notification[]; unread: number }>;
  readonly appointments: Store<Appointment[]>;
  readonly presence: Store<Record<string, boolean>>;
  /** Uploads of this person and their state (`attachment:updated`). */
  readonly uploads: Store<Record<string, Attachment>>;
  /** Messages not yet stored by the hub, oldest first: `pending`, or `failed` with the hub's error. */
  readonly outbox: Store<OutgoingMessage[]>;
  /** The clinic's people: the pools they work in. */
  readonly pools: Store<Pool[]>;

  private readonly options: Required<Pick<HubClientOptions, "ackTimeout" | "keep" | "persist">> & HubClientOptions;
  private readonly local: LocalState;
  private readonly connection = new Writable<Status>({ state: "connecting" });
  private socket: Socket | null = null;
  private token = "";
  private owner = "";
  private loaded: Promise<void> | null = null;
  private readonly inboxes = new Map<string, { state: "unclaimed" | "mine" | "all"; store: Writable<InboxItem[]> }>();
  private flushing: Promise<void> | null = null;
  private retryTimer: ReturnType<typeof setTimeout> | null = null;
  private retryDelay = 1000;
  private closed = false;
  private readonly listeners = new Map<string, Set<(payload: never) => void>>();

  constructor(options: HubClientOptions) {
    this.options = { ackTimeout: 15000, keep: 200, persist: true, ...options };
    const storage = this.options.persist ? (options.storage ?? new MemoryStorage()) : new MemoryStorage();
    this.local = new LocalState(storage, this.options.keep);
    this.status = this.connection;
    ({
      me: this.me,
      session: this.session,
      conversations: this.conversations,
      notifications: this.notifications,
      appointments: this.appointments,
      presence: this.presence,
      uploads: this.uploads,
      outbox: this.outbox,
      pools: this.pools,
    } = this.local);
    if (options.autoConnect !== false) void this.connect();
  }

  // -- connection -----------------------------------------------------------------------

  /** Connect (again): after `unauthorized`, once `getToken` has a new token. */
  async connect(): Promise<void> {
    if (this.closed) throw new HubError("disconnected", "this client is closed");
    this.connection.set({ state: "connecting" });
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
      this.connection.set({ ...this.connection.get(), state: "offline" });
      // The hub sent this socket away (its session ended): a new token may be welcome.
      if (reason === "io server disconnect") socket.connect();
    });
    socket.on("connect_error", (error: Error & { data?: { code?: string; message?: string } }) => {
      const code = error.data?.code;
      if (code === "unauthorized") {
        this.connection.set({ ...this.connection.get(), state: "unauthorized", error: HubError.from(error.data) });
      } else if (code === "unavailable") {
        // The hub could not check the session: the official client does not retry this.
        this.connection.set({ state: "offline", error: HubError.from(error.data) });
        setTimeout(() => {
          if (!this.closed && !socket.connected && this.connection.get().state === "offline") socket.connect();
        }, 2000 + Math.random() * 2000);
      } else {
        this.connection.set({ state: "offline", error: new HubError("disconnected", error.message) });
      }
    });
    socket.on("server:draining", (_notice: unknown, ack?: () => void) => ack?.());
    socket.on("session:expiring", () => void this.refreshToken());
    socket.on("session:ended", ({ reason }: ServerEvents["session:ended"]) => {
      this.connection.set({ ...this.connection.get(), ended: reason });
    });
    socket.on("message:new", ({ message }: ServerEvents["message:new"]) => {
      // A gap after the cursor: a message still on its way, or missed. Sync fills it.
      const gap = this.local.received([message], true);
      if (gap && this.connection.get().state === "online") void this.sync().catch(() => undefined);
    });
    socket.on("message:edited", ({ message }: ServerEvents["message:edited"]) => this.local.received([message], false));
    socket.on("message:retracted", ({ message }: ServerEvents["message:retracted"]) => this.local.received([message], false));
    socket.on("note:new", ({ note }: ServerEvents["note:new"]) => this.local.noted([note]));
    socket.on("message:read", (event: ServerEvents["message:read"]) => this.local.readBy(event));
    socket.on("typing", (event: ServerEvents["typing"]) => this.local.typed(event));
    socket.on("presence", ({ user_id, online }: ServerEvents["presence"]) => this.local.online({ [user_id]: online }));
    socket.on("notification:new", ({ notification }: ServerEvents["notification:new"]) => this.local.notified(notification));
    socket.on("notification:read", ({ ids }: ServerEvents["notification:read"]) => this.local.markedRead(ids));
    socket.on("appointment:updated", ({ appointment }: ServerEvents["appointment:updated"]) => this.local.rescheduled(appointment));
    socket.on("attachment:updated", ({ attachment }: ServerEvents["attachment:updated"]) => this.local.uploaded(attachment));
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
    this.connection.set({ state: "closed" });
    await this.local.persisted();
  }

  /** Forget everything: the socket closes and the storage is wiped (a shared device). */
  async signOut(): Promise<void> {
    await this.close();
    await this.local.wipe();
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
    this.connection.set({ state: "syncing" });
    this.retryDelay = 1000;
    try {
      const session = await this.request("session:me", {});
      this.local.me.set(session.user);
      this.local.session.set({ user: session.user, idle_timeout: session.idle_timeout });
      await this.loadConversations();
      await this.sync();
      await this.flush();
      await Promise.all([this.loadLists(), this.loadPresence(), this.loadPools()]);
      if (socket === this.socket && socket?.connected) {
        this.connection.set({ state: "online" });
        await this.flush(); // what was sent while the lists loaded
      }
    } catch (error) {
      // The connection went meanwhile: the next connect starts over.
      if (socket?.connected) this.connection.set({ state: "offline", error: HubError.from(error) });
    }
  }

  private async loadConversations(): Promise<void> {
    const { conversations } = await this.request("conversation:list", {});
    for (const meta of conversations) {
      const thread = this.local.thread(meta.id);
      thread.meta = { ...thread.meta, ...meta };
      this.local.save(THREAD + meta.id);
    }
    this.local.publishConversations();
  }

  /** Catch up on every conversation: new messages, then edits, retractions and expiries. */
  private async sync(): Promise<void> {
    for (let page = 0; page < SYNC_PAGES; page += 1) {
      const answer: SyncAck = await this.request("sync", { cursors: { ...this.local.cursors }, changes: { ...this.local.changes } });
      this.local.applySync(answer);
      if (!answer.has_more) return;
    }
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
      client_id: newClientId(),
      conversation_id: conversationId,
      sender_id: this.local.me.get()?.id ?? subjectOf(this.token) ?? "",
      body,
      attachment_ids: options.attachments ?? [],
      visibility: options.visibility ?? "all",
      created_at: new Date().toISOString(),
      status: "pending",
    };
    this.local.queue.push(message);
    this.local.touch(this.local.thread(conversationId));
    this.local.save(OUTBOX);
    void this.flushSoon();
    return message;
  }

  /** Send a failed message again (same client_id). */
  retry(clientId: string): void {
    const message = this.local.queue.find((m) => m.client_id === clientId);
    if (!message || message.status !== "failed") return;
    message.status = "pending";
    delete message.error;
    this.local.touch(this.local.thread(message.conversation_id));
    this.local.save(OUTBOX);
    void this.flushSoon();
  }

  /** Give up on a failed message: it leaves the outbox. */
  discard(clientId: string): void {
    const index = this.local.queue.findIndex((m) => m.client_id === clientId && m.status === "failed");
    if (index < 0) return;
    const [message] = this.local.queue.splice(index, 1);
    this.local.touch(this.local.thread(message!.conversation_id));
    this.local.save(OUTBOX);
  }

  private async flushSoon(): Promise<void> {
    await this.local.persisted(); // stored before it goes out: a reload meanwhile still has it
    const state = this.connection.get().state;
    if (state === "online") await this.flush();
  }

  // One at a time, oldest first: a conversation's messages are stored in the order sent.
  private flush(): Promise<void> {
    this.flushing ??= this.drain().finally(() => {
      this.flushing = null;
      // Sent while this drain was ending: not left waiting for the next reconnect.
      const more = this.local.queue.some((m) => m.status === "pending");
      if (more && !this.retryTimer && this.connection.get().state === "online") void this.flush();
    });
    return this.flushing;
  }

  private async drain(): Promise<void> {
    for (;;) {
      const next = this.local.queue.find((m) => m.status === "pending");
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
      this.local.touch(this.local.thread(message.conversation_id));
      this.local.save(OUTBOX);
      return true;
    }
    if ("note" in ack) this.local.noted([ack.note]);
    else this.local.received([ack.message], false); // and out of the outbox
    return true;
  }

  private retryLater(): void {
    if (this.retryTimer || this.closed) return;
    const delay = this.retryDelay;
    this.retryDelay = Math.min(this.retryDelay * 2, 30000);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      if (this.connection.get().state === "online") void this.flush().catch(() => undefined);
    }, delay);
  }

  // -- conversations --------------------------------------------------------------------

  /** One conversation's messages, oldest first, with the outbox's at the end. */
  messages(conversationId: string): Store<ChatMessage[]> {
    return this.local.thread(conversationId).view;
  }

  /** One conversation's staff-only notes (the clinic's people); loads them once. */
  notes(conversationId: string): Store<Message[]> {
    const thread = this.local.thread(conversationId);
    if (!thread.notes.get().length && this.socket?.connected) {
      void this.request("note:history", { conversation_id: conversationId }).then(
        ({ notes }) => this.local.noted(notes),
        () => undefined,
      );
    }
    return thread.notes;
  }

  /** Whether older messages than those held may exist (see `loadOlder`). */
  hasOlder(conversationId: string): boolean {
    return !this.local.thread(conversationId).complete;
  }

  /** Load a page of older messages; resolves false once there are none left. */
  async loadOlder(conversationId: string, limit = 50): Promise<boolean> {
    const thread = this.local.thread(conversationId);
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
    if (oldest === undefined && page.messages.length && this.local.cursors[conversationId] === undefined) {
      this.local.cursors[conversationId] = page.messages[page.messages.length - 1]!.seq;
      this.local.save(CURSORS);
    }
    thread.complete = !page.has_more;
    this.local.touch(thread);
    return page.has_more;
  }

  /** Open (or find) the conversation with these people; patients pass a pool instead. */
  async open(to: { member_ids?: string[]; pool_id?: string; appointment_id?: string }): Promise<Conversation> {
    const { conversation } = await this.request("conversation:open", to);
    const thread = this.local.thread(conversation.id);
    thread.meta = { ...thread.meta, ...conversation };
    this.local.save(THREAD + conversation.id);
    this.local.publishConversations();
    return conversation;
  }

  /** Mark read up to `seq` (default: the newest held). */
  async markRead(conversationId: string, seq?: number): Promise<void> {
    const thread = this.local.thread(conversationId);
    const upto = seq ?? thread.meta.last_seq;
    if (!upto || upto <= (thread.meta.read_seq ?? 0)) return;
    thread.meta = { ...thread.meta, read_seq: upto };
    this.local.touch(thread);
    await this.request("message:read", { conversation_id: conversationId, seq: upto });
  }

  async edit(conversationId: string, seq: number, body: string): Promise<Message> {
    const { message } = await this.request("message:edit", { conversation_id: conversationId, seq, body });
    this.local.received([message], false);
    return message;
  }

  async retract(conversationId: string, seq: number, reason: string): Promise<Message> {
    const { message } = await this.request("message:retract", { conversation_id: conversationId, seq, reason });
    this.local.received([message], false);
    return message;
  }

  /** Tell the others this person is typing (or stopped); not stored. */
  typing(conversationId: string, typing: boolean): void {
    if (this.connection.get().state === "online") {
      void this.request("typing", { conversation_id: conversationId, typing }).catch(() => undefined);
    }
  }

  // -- notifications, appointments, people ----------------------------------------------

  async acknowledge(ids: string[]): Promise<void> {
    if (!ids.length) return;
    await this.request("notification:ack", { ids });
    this.local.markedRead(ids);
  }

  private async loadLists(): Promise<void> {
    const [notes, appointments] = await Promise.all([
      this.request("notification:list", { limit: 50 }),
      this.request("appointment:list", { limit: 100 }),
    ]);
    this.local.listed(notes.notifications, notes.unread_count, appointments.appointments);
  }

  private async loadPresence(): Promise<void> {
    const me = this.local.me.get()?.id;
    const people = new Set<string>();
    for (const thread of this.local.threads.values()) for (const id of thread.meta.member_ids) if (id !== me) people.add(id);
    const user_ids = [...people].slice(0, 200);
    if (!user_ids.length) return;
    try {
      const { online } = await this.request("presence:query", { user_ids });
      this.local.online(online);
    } catch {
      // Presence is a nicety: the live `presence` events still come.
    }
  }

  private async loadPools(): Promise<void> {
    if (this.local.me.get()?.role === "patient") return;
    const { pools } = await this.request("inbox:pools", {});
    this.local.pools.set(pools);
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
    const { status, body } = await postFile(url, headers, file, options);
    const answer = body as { ok?: boolean; attachment?: Attachment; error?: { code: string; message: string } };
    if (!answer.ok || !answer.attachment) {
      throw new HubError((answer.error?.code as HubError["code"]) ?? "internal", answer.error?.message ?? `HTTP ${status}`, status);
    }
    this.local.uploaded(answer.attachment);
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

  /** Resolves once everything changed so far (the outbox first) is in storage. */
  async persisted(): Promise<void> {
    await this.local.persisted();
  }

  // Reads storage for the token's person before anything is shown or sent.
  private load(owner?: string): Promise<void> {
    if (owner === undefined && this.loaded) return this.loaded;
    this.loaded = (async () => {
      if (owner === undefined) {
        this.token = await this.options.getToken();
        owner = ownerOf(this.options.url, this.token);
      }
      await this.local.adopt(owner);
      this.owner = owner;
    })();
    return this.loaded;
  }
}
