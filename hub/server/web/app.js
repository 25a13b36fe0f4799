// The hub's web console: chat, appointments and notifications for doctors and patients,
// and the consultation panel for doctors. A reference client of docs/protocol.md.
import { io } from "./vendor/socket.io.esm.min.js";
import { $, clear, el, show, time } from "./dom.js";
import { Consultation } from "./consultation.js";
import { Attachments } from "./attachments.js";
import { Notify } from "./notify.js";
import { Inbox } from "./inbox.js";

const ACK_TIMEOUT = 8000; // ms before a call counts as lost (it is retried on reconnect)
const TOKEN_KEY = "hub-console-token";

const state = {
  socket: null,
  me: null, // {user_id, role}, read from the token for display; the hub decides
  idleSeconds: 0, // HUB_CONSOLE_IDLE, from session:me
  idleTimer: null,
  watchingIdle: false,
  conversations: new Map(), // id -> {meta, messages: Map(seq -> message), readBy: {}}
  current: null,
  outbox: new Map(), // client_id -> {conversation_id, body}: sent, not yet acked
  changes: {}, // conversation id -> the highest `change` seen (edits and retractions)
  notifications: [],
  unread: 0,
  appointments: new Map(),
  typingTimer: null,
  lastTyping: 0,
};

// -- sign-in --------------------------------------------------------------------------

function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const payload = JSON.parse(atob(part));
    return { user_id: String(payload.sub), role: String(payload.role) };
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
  show($("#sign-in"), false);
  show($("#main"), true);
  show($("#sign-out"), true);
  show($("#open-form"), true);
  present(me);
  connect(token);
}

// Who I am, as the token says at first, then as the hub says (session:me): an
// identity provider's token keeps its roles in claims of its own.
function present(me) {
  state.me = me;
  $("#who").textContent = `${me.user_id} (${me.role})`;
  show($("#consultation-tab"), me.role === "doctor");
  $("#open-with").placeholder = me.role === "patient" ? "write to the clinic (e.g. triage)" : "patient id";
  show($("#note-label"), me.role !== "patient");
  show($("#export-button"), me.role === "patient");
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.socket) state.socket.disconnect();
  location.reload();
}

// Back to the sign-in form, its token forgotten, with the reason.
function signedOut(reason) {
  clearTimeout(state.idleTimer);
  if (state.socket) state.socket.disconnect();
  sessionStorage.removeItem(TOKEN_KEY);
  state.me = null;
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
    if (!state.me || !state.idleSeconds) return;
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

// Thrown by call() once the session has ended: whatever was loading stops there,
// with no one left to show it to.
const SIGNED_OUT = new Error("signed out");
window.addEventListener("unhandledrejection", (event) => {
  if (event.reason === SIGNED_OUT) event.preventDefault();
});

async function call(event, payload) {
  if (!state.me) throw SIGNED_OUT;
  let answer;
  try {
    answer = await state.socket.timeout(ACK_TIMEOUT).emitWithAck(event, payload);
  } catch {
    answer = { ok: false, error: { code: "timeout", message: "no answer from the hub" } };
  }
  if (!state.me) throw SIGNED_OUT;
  return answer;
}

function connect(token) {
  const socket = io(location.origin, { auth: { token }, reconnectionDelayMax: 5000 });
  state.socket = socket;
  document.body.dataset.connection = "connecting";
  socket.on("connect", async () => {
    banner("");
    document.body.dataset.connection = "connected";
    const session = await call("session:me", {});
    if (session.ok) {
      present({ user_id: session.user.id, role: session.user.role });
      watchIdle(session.idle_timeout);
    }
    await refresh();
    document.body.dataset.synced = String(Date.now());
  });
  socket.on("disconnect", (reason) => {
    document.body.dataset.connection = "disconnected";
    if (!state.me) return; // signed out: nothing to reconnect
    banner("Connection lost. Reconnecting...");
    if (reason === "io server disconnect") socket.connect(); // the hub sent us away
  });
  socket.on("connect_error", (error) => {
    const code = error && error.data && error.data.code;
    if (code === "unauthorized") {
      signedOut(`Sign-in refused: ${error.data.message}`);
    } else if (code === "unavailable") {
      banner("The hub cannot check your session just now. Retrying...");
      setTimeout(() => { if (state.me && !socket.connected) socket.connect(); }, 3000);
    } else {
      banner("Cannot reach the hub. Retrying...");
    }
  });
  socket.on("session:expiring", ({ expires_at }) => {
    const at = new Date(expires_at).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    banner(`Your session ends at ${at}: sign in again to carry on.`);
  });
  socket.on("session:ended", ({ reason }) => {
    signedOut(reason === "revoked" ? "Your session was ended by the clinic." : "Your session expired. Sign in again.");
  });
  socket.on("server:draining", (notice, ack) => {
    banner("The hub is restarting. Reconnecting...");
    if (typeof ack === "function") ack(); // the hub closes the socket once it has this
  });
  socket.on("message:new", ({ message }) => {
    // The message the typing line announced has come: the line goes now, not in 5 s.
    if (message.conversation_id === state.current && $("#typing").dataset.userId === message.sender_id) {
      clearTimeout(state.typingTimer);
      $("#typing").textContent = "";
    }
    addMessage(message, true);
    if (!$("#tab-inbox").hidden) inbox.refresh(); // its waiting times and last messages
  });
  socket.on("message:edited", ({ message }) => addMessage(message, false));
  socket.on("message:retracted", ({ message }) => addMessage(message, false));
  socket.on("export:ready", ({ export: ready }) => showExport(ready));
  socket.on("message:read", ({ conversation_id, user_id, seq }) => {
    const conversation = state.conversations.get(conversation_id);
    if (!conversation) return;
    if (user_id === state.me.user_id) conversation.meta.read_seq = Math.max(conversation.meta.read_seq, seq);
    else conversation.readBy[user_id] = Math.max(conversation.readBy[user_id] || 0, seq);
    renderConversations();
    if (conversation_id === state.current) renderMessages();
  });
  socket.on("typing", ({ conversation_id, user_id, name, typing }) => {
    if (conversation_id !== state.current) return;
    $("#typing").textContent = typing ? `${name || user_id} is typing...` : "";
    $("#typing").dataset.userId = typing ? user_id : "";
    clearTimeout(state.typingTimer);
    if (typing) state.typingTimer = setTimeout(() => { $("#typing").textContent = ""; }, 5000);
  });
  socket.on("attachment:updated", ({ attachment }) => attachments.updated(attachment));
  socket.on("appointment:updated", ({ appointment }) => {
    state.appointments.set(appointment.id, appointment);
    renderAppointments();
  });
  socket.on("notification:new", ({ notification }) => {
    state.notifications = [notification, ...state.notifications.filter((n) => n.id !== notification.id)];
    if (!notification.read_at) state.unread += 1;
    if (notification.appointment) state.appointments.set(notification.appointment.id, notification.appointment);
    renderNotifications();
    renderAppointments();
  });
  socket.on("notification:read", ({ ids }) => {
    for (const n of state.notifications) {
      if (ids.includes(n.id) && !n.read_at) { n.read_at = new Date().toISOString(); state.unread -= 1; }
    }
    renderNotifications();
  });
  consultation.attach(socket);
  inbox.attach(socket);
}

// After every (re)connection: the lists, what was missed, and what is still unsent.
async function loadConversations() {
  const list = await call("conversation:list", {});
  if (list.ok) {
    for (const meta of list.conversations) {
      const known = state.conversations.get(meta.id);
      if (known) known.meta = { ...known.meta, ...meta };
      else state.conversations.set(meta.id, { meta, messages: new Map(), readBy: {} });
    }
  }
}

async function refresh() {
  await loadConversations();
  const cursors = {};
  for (const [id, conversation] of state.conversations) {
    if (conversation.messages.size) cursors[id] = Math.max(...conversation.messages.keys());
  }
  for (let page = 0; page < 20; page += 1) {
    const missed = await call("sync", { cursors, changes: state.changes });
    if (!missed.ok) break;
    for (const message of missed.messages) {
      addMessage(message, false);
      cursors[message.conversation_id] = Math.max(cursors[message.conversation_id] || 0, message.seq);
    }
    for (const message of missed.changed || []) addMessage(message, false);
    for (const gone of missed.expired || []) dropExpired(gone);
    if (!missed.has_more) break;
  }
  for (const [client_id, item] of state.outbox) await send(item.conversation_id, item.body, item.attachment_ids, client_id);
  const notes = await call("notification:list", { limit: 50 });
  if (notes.ok) {
    state.notifications = notes.notifications;
    state.unread = notes.unread_count;
  }
  // The hub's projection, not old notifications: each carries the appointment as it was.
  const appointments = await call("appointment:list", { limit: 100 });
  if (appointments.ok) {
    state.appointments = new Map(appointments.appointments.map((a) => [a.id, a]));
  }
  renderConversations();
  renderNotifications();
  renderAppointments();
  const link = linkFromHash();
  if (link) {
    history.replaceState(null, "", location.pathname);
    openFromLink(link);
  } else if (state.current) await openConversation(state.current);
  notify.refresh();
  if (state.me.role !== "patient") await inbox.start();
}

// -- chat -----------------------------------------------------------------------------

function addMessage(message, live) {
  let conversation = state.conversations.get(message.conversation_id);
  if (!conversation) {
    conversation = { meta: { id: message.conversation_id, member_ids: [message.sender_id], last_seq: 0, read_seq: 0 }, messages: new Map(), readBy: {} };
    state.conversations.set(message.conversation_id, conversation);
  }
  conversation.messages.set(message.seq, message);
  if (message.change) state.changes[message.conversation_id] = Math.max(state.changes[message.conversation_id] || 0, message.change);
  conversation.meta.last_seq = Math.max(conversation.meta.last_seq || 0, message.seq);
  if (message.conversation_id === state.current) {
    renderMessages();
    if (live && message.sender_id !== state.me.user_id) markRead(message.conversation_id, message.seq);
  }
  if (message.sender_id === state.me.user_id) conversation.meta.read_seq = Math.max(conversation.meta.read_seq || 0, message.seq);
  renderConversations();
}

// The clinic's retention policy deleted these messages: the console drops them too.
function dropExpired({ conversation_id, seqs, change }) {
  const conversation = state.conversations.get(conversation_id);
  if (conversation) for (const seq of seqs) conversation.messages.delete(seq);
  state.changes[conversation_id] = Math.max(state.changes[conversation_id] || 0, change);
}

function unreadOf(conversation) {
  return Math.max(0, (conversation.meta.last_seq || 0) - (conversation.meta.read_seq || 0));
}

// People by name: the directory's, sent with each conversation (ids only as a fallback).
function title(conversation) {
  const members = conversation.meta.members || (conversation.meta.member_ids || []).map((id) => ({ id, name: id }));
  const others = members.filter((m) => m.id !== state.me.user_id).map((m) => m.title ? `${m.name}, ${m.title}` : m.name);
  const about = conversation.meta.appointment_id ? ` · ${conversation.meta.appointment_id}` : "";
  const nobody = conversation.meta.routed ? "The clinic" : conversation.meta.id;
  return (others.join(", ") || nobody) + about;
}

function renderConversations() {
  const list = $("#conversation-list");
  clear(list);
  for (const [id, conversation] of state.conversations) {
    const unread = unreadOf(conversation);
    list.append(el("li", {},
      el("button", { type: "button", class: id === state.current ? "item active" : "item", dataset: { conversation: id }, onclick: () => openConversation(id) },
        el("span", { text: title(conversation) }),
        unread ? el("span", { class: "badge", text: String(unread) }) : null)));
  }
}

async function openConversation(id) {
  state.current = id;
  attachments.setConversation(id);
  const conversation = state.conversations.get(id);
  $("#conversation-title").textContent = title(conversation);
  show($("#send-form"), true);
  $("#typing").textContent = "";
  const history = await call("message:history", { conversation_id: id, limit: 100 });
  if (history.ok) for (const message of history.messages) conversation.messages.set(message.seq, message);
  if (state.me.role !== "patient") await inbox.loadNotes(id);
  renderMessages();
  renderConversations();
  const last = Math.max(0, ...conversation.messages.keys());
  if (last > (conversation.meta.read_seq || 0)) await markRead(id, last);
}

async function markRead(conversation_id, seq) {
  const conversation = state.conversations.get(conversation_id);
  if (document.hidden || seq <= (conversation.meta.read_seq || 0)) return;
  const answer = await call("message:read", { conversation_id, seq });
  if (answer.ok) {
    conversation.meta.read_seq = Math.max(conversation.meta.read_seq || 0, seq);
    renderConversations();
  }
}

function renderMessages() {
  const list = $("#messages");
  clear(list);
  const conversation = state.conversations.get(state.current);
  if (!conversation) return;
  const readers = Object.values(conversation.readBy);
  const readUpTo = readers.length ? Math.max(...readers) : 0;
  const ordered = [...conversation.messages.values()].sort((a, b) => a.seq - b.seq);
  // Staff-only notes sit between the messages by time, marked as notes.
  const notes = inbox.notesOf(state.current).sort((a, b) => String(a.created_at).localeCompare(String(b.created_at)));
  for (const message of ordered) {
    while (notes.length && String(notes[0].created_at) <= String(message.created_at)) list.append(inbox.noteView(notes.shift()));
    const mine = message.sender_id === state.me.user_id;
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
  for (const [client_id, item] of state.outbox) {
    if (item.conversation_id !== state.current) continue;
    list.append(el("li", { class: "message mine pending", dataset: { client: client_id } },
      el("span", { class: "meta", text: "sending..." }), el("p", { class: "body", text: item.body })));
  }
  list.scrollTop = list.scrollHeight;
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
  const payload = { conversation_id: message.conversation_id, seq: message.seq };
  const answer = action === "edit"
    ? await call("message:edit", { ...payload, body: asked })
    : await call("message:retract", { ...payload, reason: asked });
  if (answer.ok) addMessage(answer.message, false);
  else banner(`Not changed: ${answer.error.message}`);
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

async function send(conversation_id, body, attachment_ids = [], client_id = crypto.randomUUID()) {
  state.outbox.set(client_id, { conversation_id, body, attachment_ids });
  renderMessages();
  const answer = await call("message:send", { conversation_id, client_id, body, attachment_ids });
  if (answer.ok) {
    state.outbox.delete(client_id);
    addMessage(answer.message, false);
  } else if (answer.error.code !== "unavailable" && answer.error.code !== "timeout") {
    state.outbox.delete(client_id); // refused for good: say why, keep the text in the box
    $("#body").value = body;
    banner(`Not sent: ${answer.error.message}`);
  } // else: stays in the outbox and goes again, same client_id, after reconnecting
  renderMessages();
}

function typing() {
  const now = Date.now();
  if (!state.current || now - state.lastTyping < 3000) return;
  state.lastTyping = now;
  call("typing", { conversation_id: state.current, typing: true });
}

// -- appointments and notifications ---------------------------------------------------

function renderAppointments() {
  const list = $("#appointment-list");
  clear(list);
  const sorted = [...state.appointments.values()].sort((a, b) => String(a.start).localeCompare(String(b.start)));
  for (const appointment of sorted) {
    list.append(el("li", { class: `appointment ${appointment.status}`, dataset: { appointment: appointment.id, start: appointment.start } },
      el("span", { class: "status-pill", text: appointment.status }),
      el("span", { text: ` ${time(appointment.start)} · ${state.me.role === "doctor" ? appointment.patient_name || appointment.patient_id : appointment.doctor_name || appointment.doctor_id}` }),
      state.me.role === "doctor" ? el("button", { type: "button", class: "small", text: "Consult", onclick: () => consultation.open(appointment.id) }) : null));
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

function renderNotifications() {
  const badge = $("#notification-badge");
  badge.textContent = String(state.unread);
  show(badge, state.unread > 0);
  const list = $("#notification-list");
  clear(list);
  for (const n of state.notifications) {
    list.append(el("li", { class: n.read_at ? "notification" : "notification unread", dataset: { notification: n.id } },
      el("strong", { text: LABELS[n.type] || n.type }),
      el("span", { text: n.appointment ? ` ${time(n.appointment.start)}` : n.conversation ? ` · ${n.conversation.pool_name || n.conversation.pool_id}` : "" }),
      el("span", { class: "meta", text: ` · ${time(n.created_at)}` })));
  }
}

async function markAllRead() {
  const ids = state.notifications.filter((n) => !n.read_at).map((n) => n.id).slice(0, 100);
  if (!ids.length) return;
  const answer = await call("notification:ack", { ids });
  if (answer.ok) {
    for (const n of state.notifications) if (ids.includes(n.id)) n.read_at = new Date().toISOString();
    state.unread = Math.max(0, state.unread - ids.length);
    renderNotifications();
  }
}

// -- wiring ---------------------------------------------------------------------------

const consultation = new Consultation(call, () => switchTab("consultation"));
const attachments = new Attachments(call, () => sessionStorage.getItem(TOKEN_KEY), banner);
const notify = new Notify(call, banner);
const inbox = new Inbox(call, banner, (item) => {
  const id = item.conversation_id;
  if (!state.conversations.has(id)) {
    const meta = { id, member_ids: [item.patient.id], members: [item.patient], routed: true, last_seq: 0, read_seq: 0 };
    state.conversations.set(id, { meta, messages: new Map(), readBy: {} });
  }
  switchTab("chat");
  openConversation(id);
});
inbox.onNote = (note) => { if (note.conversation_id === state.current) renderMessages(); };
// A conversation handed to me: it joins my list, with its patient's name.
inbox.onUpdate = async () => { await loadConversations(); renderConversations(); };

// A notification that was clicked: its conversation, or the notifications tab.
function openFromLink(data) {
  if (data.conversation_id && state.conversations.has(data.conversation_id)) {
    switchTab("chat");
    openConversation(data.conversation_id);
  } else if (data.type === "appointment" || data.notifications) {
    switchTab("notifications");
  }
}

function linkFromHash() {
  const match = /(?:^#|&)conversation=([^&]+)/.exec(location.hash);
  if (match) return { conversation_id: decodeURIComponent(match[1]) };
  return location.hash === "#notifications" ? { notifications: true } : null;
}

function switchTab(name) {
  for (const button of document.querySelectorAll(".tabs button")) button.classList.toggle("active", button.dataset.tab === name);
  for (const tab of ["chat", "notifications", "consultation", "inbox"]) show($(`#tab-${tab}`), tab === name);
  if (name === "inbox") inbox.refresh();
}

// A staff-only note: never queued for the patient's eyes, never retried as a message.
async function sendNote(body) {
  if (!body.trim() || !state.current) return;
  const answer = await call("message:send", { conversation_id: state.current, client_id: crypto.randomUUID(), body, visibility: "staff" });
  if (!answer.ok) { banner(`Note not saved: ${answer.error.message}`); return; }
  $("#body").value = "";
  inbox.addNote(answer.note);
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
    if ($("#as-note").checked) { sendNote(body); return; }
    if (attachments.busy()) { banner("Wait for the attachments: they are still being uploaded or checked."); return; }
    const attachment_ids = attachments.ready();
    if ((!body.trim() && !attachment_ids.length) || !state.current) return;
    $("#body").value = "";
    state.lastTyping = 0;
    attachments.clearSent();
    banner("");
    send(state.current, body, attachment_ids);
  });
  $("#body").addEventListener("input", typing);
  $("#open-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const other = $("#open-with").value.trim();
    if (!other) return;
    const request = state.me.role === "patient" ? { pool_id: other } : { member_ids: [other] };
    const answer = await call("conversation:open", request);
    if (!answer.ok) { banner(answer.error.message); return; }
    const meta = { ...answer.conversation, read_seq: 0 };
    if (!state.conversations.has(meta.id)) state.conversations.set(meta.id, { meta, messages: new Map(), readBy: {} });
    $("#open-with").value = "";
    await openConversation(meta.id);
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
