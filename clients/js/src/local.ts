// The device's copy of the hub: conversations and their messages, the outbox, cursors,
// lists, typing; the stores a UI renders from, and their place in storage. The client
// (client.ts) feeds it what the hub says; nothing here talks to the network.
import type {
  Appointment,
  Attachment,
  Conversation,
  Me,
  Message,
  Notification,
  Pool,
  ServerEvents,
  SyncAck,
} from "./protocol.js";
import type { Storage } from "./storage.js";
import { Writable } from "./store.js";

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

export interface Thread {
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

const TYPING_MS = 6000; // a typing line without news for this long is stale
// Storage keys: one per list, one per conversation.
const OWNER = "owner";
export const OUTBOX = "outbox";
export const CURSORS = "cursors";
export const LISTS = "lists";
export const THREAD = "conversation:";

export class LocalState {
  readonly me = new Writable<Me | null>(null);
  readonly session = new Writable<{ user: Me; idle_timeout: number } | null>(null);
  readonly conversations = new Writable<ConversationView[]>([]);
  readonly notifications = new Writable<{ items: Notification[]; unread: number }>({ items: [], unread: 0 });
  readonly appointments = new Writable<Appointment[]>([]);
  readonly presence = new Writable<Record<string, boolean>>({});
  readonly uploads = new Writable<Record<string, Attachment>>({});
  readonly outbox = new Writable<OutgoingMessage[]>([]);
  readonly pools = new Writable<Pool[]>([]);

  readonly threads = new Map<string, Thread>();
  queue: OutgoingMessage[] = [];
  cursors: Record<string, number> = {};
  changes: Record<string, number> = {};
  private owner = "";
  private readonly typingNow = new Map<string, Map<string, { name: string; timer: ReturnType<typeof setTimeout> }>>();
  private writes: Promise<void> = Promise.resolve();
  private readonly dirty = new Set<string>();

  constructor(
    private readonly storage: Storage,
    private readonly keep: number,
  ) {}

  applySync(answer: SyncAck): void {
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

  /** Places messages by seq; true when a live one leaves a gap after its cursor. */
  received(messages: Message[], live: boolean): boolean {
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
    return gap;
  }

  // A stored message of mine that is still in the outbox (its ack was lost): done.
  settled(message: Message): void {
    const index = this.queue.findIndex((m) => m.client_id === message.client_id && m.sender_id === message.sender_id);
    if (index < 0) return;
    this.queue.splice(index, 1);
    this.save(OUTBOX);
  }

  noted(notes: Message[]): void {
    for (const note of notes) {
      const thread = this.thread(note.conversation_id);
      const list = [...thread.notes.get().filter((n) => n.seq !== note.seq), note].sort((a, b) => a.seq - b.seq);
      thread.notes.set(list);
      this.settled(note);
      this.touch(thread);
    }
  }

  changed(conversationId: string, change: number): void {
    this.changes[conversationId] = Math.max(this.changes[conversationId] ?? 0, change);
    this.save(CURSORS);
  }

  // The message a typing line announced has come: the line goes with it.
  typingEnds(conversationId: string, userId: string): void {
    const who = this.typingNow.get(conversationId);
    const was = who?.get(userId);
    if (!who || !was) return;
    clearTimeout(was.timer);
    who.delete(userId);
    this.publishConversations();
  }

  typed({ conversation_id, user_id, name, typing }: ServerEvents["typing"]): void {
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

  readBy({ conversation_id, user_id, seq }: ServerEvents["message:read"]): void {
    if (user_id !== this.me.get()?.id) return; // others' read receipts: request them with on()
    const thread = this.thread(conversation_id);
    if (seq > (thread.meta.read_seq ?? 0)) {
      thread.meta = { ...thread.meta, read_seq: seq };
      this.touch(thread);
    }
  }

  markedRead(ids: string[]): void {
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

  thread(conversationId: string): Thread {
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

  notified(notification: Notification): void {
    const { items, unread } = this.notifications.get();
    const known = items.some((n) => n.id === notification.id);
    this.notifications.set({
      items: [notification, ...items.filter((n) => n.id !== notification.id)],
      unread: unread + (known || notification.read_at ? 0 : 1),
    });
    this.save(LISTS);
  }

  /** An appointment as the hub's projection has it now (never an older snapshot). */
  rescheduled(appointment: Appointment): void {
    this.appointments.set(sortAppointments([appointment, ...this.appointments.get().filter((a) => a.id !== appointment.id)]));
    this.save(LISTS);
  }

  /** The lists as the hub has them after a (re)connection. */
  listed(notifications: Notification[], unread: number, appointments: Appointment[]): void {
    this.notifications.set({ items: notifications, unread });
    this.appointments.set(sortAppointments(appointments));
    this.save(LISTS);
  }

  online(users: Record<string, boolean>): void {
    this.presence.set({ ...this.presence.get(), ...users });
  }

  uploaded(attachment: Attachment): void {
    this.uploads.set({ ...this.uploads.get(), [attachment.id]: attachment });
  }

  /** A thread changed: its view, the conversation list, and its place in storage. */
  touch(thread: Thread): void {
    const stored = [...thread.messages.values()].sort((a, b) => a.seq - b.seq);
    const outgoing = this.queue.filter((m) => m.conversation_id === thread.meta.id && m.visibility === "all");
    thread.view.set([...stored.map((m) => ({ ...m, status: "sent" as const })), ...outgoing.map((m) => ({ ...m }))]);
    this.save(THREAD + thread.meta.id);
    this.publishConversations();
  }

  publishConversations(): void {
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

  /** Loads what storage holds for `owner`, after wiping anyone else's. */
  async adopt(owner: string): Promise<void> {
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
  }

  /** Resolves once everything changed so far is in storage. */
  async persisted(): Promise<void> {
    await Promise.resolve();
    await this.writes;
  }

  /** Forgets everything, in memory and in storage. */
  async wipe(): Promise<void> {
    await this.writes;
    await this.storage.clear();
    this.owner = "";
    this.reset();
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

  reset(): void {
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
  save(key: string): void {
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
    const kept = messages.slice(-this.keep);
    return { meta: thread.meta, messages: kept, complete: thread.complete && kept.length === messages.length } satisfies Saved;
  }
}

function sortAppointments(list: Appointment[]): Appointment[] {
  return [...list].sort((a, b) => a.start.localeCompare(b.start));
}
