// The hub's web console: chat, appointments and notifications for doctors and patients,
// the inbox for the clinic's people, and the consultation panel for doctors. UI only:
// the connection, sync, the outbox and every list come from the client SDK
// (clients/js, bundled into vendor/hub-client.js), as in any app built on the hub.
import { HubClient, IndexedDBStorage } from "./vendor/hub-client.js";
import { $, clear, el, show, time } from "./dom.js";
import { Consultation } from "./consultation.js";
import { Attachments } from "./attachments.js";
import { Notify } from "./notify.js";
import { Inbox } from "./inbox.js";

const TOKEN_KEY = "hub-console-token";
const TYPING_EVERY_MS = 3000; // at most one typing event per this long

const state = {
  client: null,
  me: null, // {id, role, name}: the token's reading at first, then the hub's (session:me)
  current: null, // the open conversation's id
  watching: [], // what stops the open conversation's subscriptions
  readBy: {}, // conversation id -> {user id -> seq}: the others' read receipts, live
  fallbackTitles: new Map(), // conversation id -> title, for an inbox item not in my list
  idleSeconds: 0,
  idleTimer: null,
  watchingIdle: false,
  lastTyping: 0,
  messages: [], // the open conversation's view, from the SDK
  conversations: [],
};

// -- sign-in --------------------------------------------------------------------------

function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const payload = JSON.parse(atob(part));
    return { id: String(payload.sub), role: String(payload.role), name: String(payload.name || payload.sub) };
  } catch {
    return null;
  }
}

function tokenFromPage() {
  // A link from `hub demo` carries the token in the fragment: never sent to a server.
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    const token = decodeURIComponent(match[1]);
    sessionStorage.setItem(TOKEN_KEY, token);
    history.replaceState(null, "", location.pathname);
    return token;
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

function signIn(token) {
  const me = claims(token);
  if (!me) {
    $("#sign-in-error").textContent = "That is not a token.";
    return;
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#sign-in-error").textContent = "";
  show($("#sign-in"), false);
  show($("#main"), true);
  show($("#sign-out"), true);
  show($("#open-form"), true);
  present(me);
  // The outbox and the lists survive a reload in IndexedDB; signing out wipes them.
  const client = new HubClient({
    url: location.origin,
    getToken: () => sessionStorage.getItem(TOKEN_KEY) || token,
    storage: new IndexedDBStorage("hub-console"),
    socket: { reconnectionDelayMax: 5000 },
  });
  state.client = client;
  client.status.subscribe(onStatus);
  client.me.subscribe((who) => { if (who) present(who); });
  client.session.subscribe((session) => { if (session) watchIdle(session.idle_timeout); });
  client.conversations.subscribe(renderConversations);
  client.notifications.subscribe(renderNotifications);
  client.appointments.subscribe(renderAppointments);
  client.uploads.subscribe((uploads) => attachments.updated(uploads));
  client.pools.subscribe((pools) => inbox.setPools(pools));
  client.on("message:read", ({ conversation_id, user_id, seq }) => {
    const readers = (state.readBy[conversation_id] ||= {});
    readers[user_id] = Math.max(readers[user_id] || 0, seq);
    if (conversation_id === state.current) renderMessages();
  });
  client.on("message:new", ({ message }) => {
    if (message.conversation_id === state.current && !document.hidden) client.markRead(message.conversation_id).catch(() => {});
    if (!$("#tab-inbox").hidden) inbox.refresh(); // its waiting times and last messages
  });
  client.on("export:ready", ({ export: ready }) => showExport(ready));
  consultation.attach(client);
  inbox.attach(client);
}

// Who I am, as the token says at first, then as the hub says: an identity provider's
// token keeps its roles in claims of its own, and the clinic's directory has the name.
function present(me) {
  state.me = me;
  $("#who").textContent = me.name;
  $("#who").title = `${me.id} (${me.role})`;
  show($("#consultation-tab"), me.role === "doctor");
  $("#open-with").placeholder = me.role === "patient" ? "write to the clinic (e.g. triage)" : "patient id";
  show($("#note-label"), me.role !== "patient");
  show($("#export-button"), me.role === "patient");
}

async function signOut() {
  if (state.client) await state.client.signOut();
  sessionStorage.removeItem(TOKEN_KEY);
  location.reload();
}

// Back to the sign-in form with the reason; the token and everything stored forgotten.
function signedOut(reason) {
  clearTimeout(state.idleTimer);
  const client = state.client;
  state.client = null;
  if (client) client.signOut().catch(() => {});
  sessionStorage.removeItem(TOKEN_KEY);
  state.me = null;
  state.current = null;
  for (const stop of state.watching) stop();
  state.watching = [];
  $("#who").textContent = "";
  show($("#sign-out"), false);
  show($("#main"), false);
  show($("#sign-in"), true);
  banner("");
  $("#sign-in-error").textContent = reason;
}

// Sign out after the hub's idle time (HUB_CONSOLE_IDLE, from session:me) without
// input: a console left open on a shared screen does not stay signed in.
const ACTIVITY = ["keydown", "pointerdown", "wheel", "touchstart"];
function watchIdle(seconds) {
  state.idleSeconds = seconds;
  const restart = () => {
    clearTimeout(state.idleTimer);
    if (!state.client || !state.idleSeconds) return;
    state.idleTimer = setTimeout(() => {
      const minutes = Math.max(1, Math.round(state.idleSeconds / 60));
      signedOut(`Signed out after ${minutes} min without activity. Sign in again.`);
    }, state.idleSeconds * 1000);
  };
  if (!state.watchingIdle) {
    state.watchingIdle = true;
    for (const name of ACTIVITY) document.addEventListener(name, restart, { passive: true, capture: true });
  }
  restart();
}

// -- connection -----------------------------------------------------------------------

function banner(text) {
  $("#banner").textContent = text || "";
  show($("#banner"), Boolean(text));
}

// A call through the SDK, answered as the hub answers: {ok, ...} or {ok: false, error}.
async function call(event, payload) {
  if (!state.client) return { ok: false, error: { code: "disconnected", message: "signed out" } };
  try {
    return await state.client.request(event, payload);
  } catch (error) {
    return { ok: false, error: { code: error.code || "internal", message: error.message } };
  }
}

function onStatus({ state: connection, error, ended }) {
  if (!state.client) return;
  if (connection === "online") {
    banner("");
    document.body.dataset.connection = "connected";
    document.body.dataset.synced = String(Date.now());
    if (state.current) openConversation(state.current);
    inbox.refresh();
    notify.refresh();
    openFromHash();
  } else if (connection === "offline") {
    document.body.dataset.connection = "disconnected";
    banner(error && error.code === "unavailable"
      ? "The hub cannot check your session just now. Retrying..."
      : "Connection lost. Reconnecting...");
  } else if (connection === "unauthorized") {
    signedOut(ended === "revoked" ? "Your session was ended by the clinic."
      : ended === "token_expired" ? "Your session expired. Sign in again."
        : `Sign-in refused: ${error ? error.message : "unauthorized"}`);
  } else if (connection === "connecting" || connection === "syncing") {
    document.body.dataset.connection = "connecting";
  }
}

// -- chat -----------------------------------------------------------------------------

// People by name: the directory's, sent with each conversation (ids only as a fallback).
function title(view) {
  if (!view) return state.fallbackTitles.get(state.current) || "Conversation";
  const members = view.members.length ? view.members : view.member_ids.map((id) => ({ id, name: id }));
  const others = members.filter((m) => m.id !== state.me.id).map((m) => m.title ? `${m.name}, ${m.title}` : m.name);
  const about = view.appointment_id ? ` · ${view.appointment_id}` : "";
  const nobody = view.routed ? "The clinic" : state.fallbackTitles.get(view.id) || view.id;
  return (others.join(", ") || nobody) + about;
}

function renderConversations(views = state.conversations) {
  state.conversations = views;
  if (!state.me) return;
  const list = $("#conversation-list");
  clear(list);
  for (const view of views) {
    list.append(el("li", {},
      el("button", { type: "button", class: view.id === state.current ? "item active" : "item", dataset: { conversation: view.id }, onclick: () => openConversation(view.id) },
        el("span", { text: title(view) }),
        view.unread ? el("span", { class: "badge", text: String(view.unread) }) : null)));
  }
  const open = views.find((v) => v.id === state.current);
  if (state.current) {
    $("#conversation-title").textContent = title(open);
    const typing = Object.values((open && open.typing) || {});
    $("#typing").textContent = typing.length ? `${typing.join(", ")} ${typing.length > 1 ? "are" : "is"} typing...` : "";
  }
}

async function openConversation(id) {
  const client = state.client;
  if (!client) return;
  if (state.current !== id) {
    for (const stop of state.watching) stop();
    state.current = id;
    attachments.setConversation(id);
    const messages = client.messages(id);
    state.watching = [messages.subscribe((list) => { state.messages = list; renderMessages(); })];
    if (state.me.role !== "patient") state.watching.push(client.notes(id).subscribe(() => renderMessages()));
  }
  show($("#send-form"), true);
  renderConversations();
  // The newest page when little is held (a new device holds only what it had not read).
  if (state.messages.filter((m) => m.status === "sent").length < 30 && client.hasOlder(id)) {
    await client.loadOlder(id, 100).catch(() => {});
  }
  if (!document.hidden) await client.markRead(id).catch(() => {});
}

function renderMessages() {
  const list = $("#messages");
  clear(list);
  const client = state.client;
  if (!client || !state.current) return;
  const readers = Object.values(state.readBy[state.current] || {});
  const readUpTo = readers.length ? Math.max(...readers) : 0;
  if (client.hasOlder(state.current) && state.messages.length) {
    list.append(el("li", { class: "older" }, el("button", { type: "button", class: "link", text: "Earlier messages",
      onclick: () => client.loadOlder(state.current, 50).catch(() => {}) })));
  }
  // Staff-only notes sit between the messages by time, marked as notes.
  const notes = state.me.role === "patient" ? [] : [...client.notes(state.current).get()]
    .sort((a, b) => String(a.created_at).localeCompare(String(b.created_at)));
  for (const message of state.messages) {
    if (message.status !== "sent") {
      list.append(outgoing(message));
      continue;
    }
    while (notes.length && String(notes[0].created_at) <= String(message.created_at)) list.append(inbox.noteView(notes.shift()));
    const mine = message.sender_id === state.me.id;
    const gone = message.retracted || message.expired;
    const mark = message.edited ? " · edited" : "";
    list.append(el("li", { class: mine ? "message mine" : "message", dataset: { seq: String(message.seq) } },
      el("span", { class: "meta", text: `${mine ? "you" : message.sender_name || message.sender_id} · ${time(message.created_at)}${mark}` }),
      gone ? el("p", { class: "body withdrawn", text: message.retracted ? "Message retracted" : "Message removed (retention policy)" }) : null,
      !gone && message.body ? el("p", { class: "body", text: message.body }) : null,
      gone ? null : attachments.view(message),
      mine && !gone ? changeButtons(message) : null,
      mine && readUpTo >= message.seq ? el("span", { class: "receipt", text: "read" }) : null));
  }
  for (const note of notes) list.append(inbox.noteView(note));
  list.scrollTop = list.scrollHeight;
}

// A message of the outbox: on its way, or refused (retry or discard).
function outgoing(message) {
  const failed = message.status === "failed";
  return el("li", { class: failed ? "message mine failed" : "message mine pending", dataset: { client: message.client_id } },
    el("span", { class: "meta", text: failed ? `not sent: ${message.error.message}` : "sending..." }),
    el("p", { class: "body", text: message.body }),
    failed ? el("span", { class: "changes" },
      el("button", { type: "button", class: "link", text: "Retry", onclick: () => state.client.retry(message.client_id) }),
      el("button", { type: "button", class: "link", text: "Discard", onclick: () => state.client.discard(message.client_id) })) : null);
}

// The sender's own messages: edit (within the hub's window) or retract, with a reason.
function changeButtons(message) {
  return el("span", { class: "changes" },
    el("button", { type: "button", class: "link", dataset: { action: "edit" }, text: "Edit", onclick: () => changeMessage(message, "edit") }),
    el("button", { type: "button", class: "link", dataset: { action: "retract" }, text: "Retract", onclick: () => changeMessage(message, "retract") }));
}

async function changeMessage(message, action) {
  const asked = action === "edit" ? prompt("Edit your message", message.body) : prompt("Why retract this message? (kept in the record, not shown)");
  if (asked === null || !asked.trim()) return;
  try {
    if (action === "edit") await state.client.edit(message.conversation_id, message.seq, asked);
    else await state.client.retract(message.conversation_id, message.seq, asked);
  } catch (error) {
    banner(`Not changed: ${error.message}`);
  }
}

function typing() {
  const now = Date.now();
  if (!state.current || now - state.lastTyping < TYPING_EVERY_MS) return;
  state.lastTyping = now;
  state.client.typing(state.current, true);
}

// -- the patient's copy of their record ------------------------------------------------

async function requestExport() {
  const answer = await call("export:request", {});
  if (!answer.ok) { banner(answer.error.message); return; }
  banner("Your record is being prepared; it will be ready here in a moment.");
}

function showExport(ready) {
  if (ready.state !== "ready") { banner("Your record could not be prepared. Try again later."); return; }
  banner("");
  const box = $("#export-links");
  clear(box);
  box.append(el("span", { text: "Your record: " }),
    el("a", { href: ready.links.pdf, text: "PDF", download: "" }), " · ",
    el("a", { href: ready.links.bundle, text: "FHIR (for other health apps)", download: "" }),
    el("span", { class: "meta", text: " (links valid a few minutes)" }));
  show(box, true);
}

// -- appointments and notifications ---------------------------------------------------

function renderAppointments(appointments) {
  if (!state.me) return;
  const list = $("#appointment-list");
  clear(list);
  const doctor = state.me.role === "doctor";
  for (const appointment of appointments) {
    list.append(el("li", { class: `appointment ${appointment.status}`, dataset: { appointment: appointment.id, start: appointment.start } },
      el("span", { class: "status-pill", text: appointment.status }),
      el("span", { text: ` ${time(appointment.start)} · ${doctor ? appointment.patient_name || appointment.patient_id : appointment.doctor_name || appointment.doctor_id}` }),
      doctor ? el("button", { type: "button", class: "small", text: "Consult", onclick: () => consultation.open(appointment.id) }) : null));
  }
}

const LABELS = {
  "appointment.scheduled": "Appointment scheduled",
  "appointment.confirmed": "Appointment confirmed",
  "appointment.rescheduled": "Appointment moved",
  "appointment.cancelled": "Appointment cancelled",
  "appointment.completed": "Appointment completed",
  "appointment.no_show": "Marked as missed",
  "inbox.escalated": "A patient is waiting for an answer",
};

function renderNotifications({ items, unread }) {
  const badge = $("#notification-badge");
  badge.textContent = String(unread);
  show(badge, unread > 0);
  const list = $("#notification-list");
  clear(list);
  for (const n of items) {
    list.append(el("li", { class: n.read_at ? "notification" : "notification unread", dataset: { notification: n.id } },
      el("strong", { text: LABELS[n.type] || n.type }),
      el("span", { text: n.appointment ? ` ${time(n.appointment.start)}` : n.conversation ? ` · ${n.conversation.pool_name || n.conversation.pool_id}` : "" }),
      el("span", { class: "meta", text: ` · ${time(n.created_at)}` })));
  }
}

async function markAllRead() {
  const ids = state.client.notifications.get().items.filter((n) => !n.read_at).map((n) => n.id).slice(0, 100);
  await state.client.acknowledge(ids).catch((error) => banner(error.message));
}

// -- wiring ---------------------------------------------------------------------------

const consultation = new Consultation(call, () => switchTab("consultation"));
const attachments = new Attachments(() => state.client, banner);
const notify = new Notify(() => state.client, banner);
const inbox = new Inbox(call, banner, (item) => {
  state.fallbackTitles.set(item.conversation_id, item.patient.name);
  switchTab("chat");
  openConversation(item.conversation_id);
});

// A notification that was clicked: its conversation, or the notifications tab.
function openFromLink(data) {
  if (data.conversation_id && state.conversations.some((v) => v.id === data.conversation_id)) {
    switchTab("chat");
    openConversation(data.conversation_id);
  } else if (data.type === "appointment" || data.notifications) {
    switchTab("notifications");
  }
}

function openFromHash() {
  const match = /(?:^#|&)conversation=([^&]+)/.exec(location.hash);
  const link = match ? { conversation_id: decodeURIComponent(match[1]) } : location.hash === "#notifications" ? { notifications: true } : null;
  if (!link) return;
  history.replaceState(null, "", location.pathname);
  openFromLink(link);
}

function switchTab(name) {
  for (const button of document.querySelectorAll(".tabs button")) button.classList.toggle("active", button.dataset.tab === name);
  for (const tab of ["chat", "notifications", "consultation", "inbox"]) show($(`#tab-${tab}`), tab === name);
  if (name === "inbox") inbox.refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll(".tabs button")) button.addEventListener("click", () => switchTab(button.dataset.tab));
  $("#sign-in-form").addEventListener("submit", (event) => {
    event.preventDefault();
    signIn($("#token").value.trim());
  });
  $("#sign-out").addEventListener("click", signOut);
  $("#export-button").addEventListener("click", requestExport);
  $("#send-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const body = $("#body").value;
    if (!state.current) return;
    if ($("#as-note").checked) {
      // A staff-only note: through the outbox as well, never shown to the patient.
      if (!body.trim()) return;
      $("#body").value = "";
      state.client.send(state.current, body, { visibility: "staff" });
      return;
    }
    if (attachments.busy()) { banner("Wait for the attachments: they are still being uploaded or checked."); return; }
    const ids = attachments.ready();
    if (!body.trim() && !ids.length) return;
    $("#body").value = "";
    state.lastTyping = 0;
    attachments.clearSent();
    banner("");
    state.client.send(state.current, body, { attachments: ids });
  });
  $("#body").addEventListener("input", typing);
  $("#open-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const other = $("#open-with").value.trim();
    if (!other) return;
    const request = state.me.role === "patient" ? { pool_id: other } : { member_ids: [other] };
    try {
      const conversation = await state.client.open(request);
      $("#open-with").value = "";
      await openConversation(conversation.id);
    } catch (error) {
      banner(error.message);
    }
  });
  $("#mark-read").addEventListener("click", markAllRead);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && state.current) openConversation(state.current);
  });
  consultation.bind();
  attachments.bind();
  notify.bind();
  inbox.bind();
  $("#transfer-form").addEventListener("submit", (event) => inbox.submitTransfer(event));
  $("#transfer-cancel").addEventListener("click", () => show($("#transfer-form"), false));
  $("#as-note").addEventListener("change", () => { document.body.dataset.note = $("#as-note").checked ? "on" : "off"; });
  if ("serviceWorker" in navigator) {
    navigator.serviceWorker.addEventListener("message", (event) => { if (event.data?.open) openFromLink(event.data.open); });
  }
  const token = tokenFromPage();
  if (token) signIn(token);
});
