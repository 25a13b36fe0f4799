// The clinic's inbox in the console (doctors, nurses, front desk, admins): the pools
// one works in, their conversations (unclaimed / mine / all, longest waiting first,
// patients by name), claim, release and transfer; and the staff-only notes beside a
// conversation, shown apart from the messages the patient sees.
import { $, clear, el, show, time } from "./dom.js";

function waited(item) {
  if (!item.waiting_since) return "answered";
  const seconds = item.waiting_seconds;
  if (seconds < 60) return "waiting under a minute";
  if (seconds < 3600) return `waiting ${Math.max(1, Math.round(seconds / 60))} min`;
  if (seconds < 86400) return `waiting ${Math.round(seconds / 3600)} h`;
  return `waiting ${Math.round(seconds / 86400)} d`;
}

export class Inbox {
  constructor(call, banner, open) {
    this.call = call;
    this.banner = banner;
    this.open = open; // (inbox item) => the chat tab on its conversation
    this.pools = [];
    this.pool = null;
    this.state = "unclaimed";
  }

  bind() {
    for (const button of document.querySelectorAll("#inbox-states button")) {
      button.addEventListener("click", () => { this.state = button.dataset.state; this.refresh(); });
    }
    $("#inbox-pool").addEventListener("change", () => { this.pool = $("#inbox-pool").value; this.refresh(); });
  }

  attach(client) {
    client.on("inbox:updated", () => this.refresh());
  }

  // The pools I work in (the SDK's, after each connection): the tab shows when there are some.
  setPools(pools) {
    this.pools = pools;
    show($("#inbox-tab"), pools.length > 0);
    const select = $("#inbox-pool");
    clear(select);
    for (const pool of pools) select.append(el("option", { value: pool.id, text: pool.name }));
    if (!pools.some((p) => p.id === this.pool)) this.pool = pools[0]?.id || null;
    if (this.pool) select.value = this.pool;
    this.refresh();
  }

  async refresh() {
    if (!this.pool) return;
    for (const button of document.querySelectorAll("#inbox-states button")) {
      button.classList.toggle("active", button.dataset.state === this.state);
    }
    const answer = await this.call("inbox:list", { pool_id: this.pool, state: this.state });
    const list = $("#inbox-list");
    clear(list);
    if (!answer.ok) { this.banner(answer.error.message); return; }
    for (const item of answer.conversations) {
      const last = item.last_message;
      list.append(el("li", { class: item.waiting_since ? "inbox-item waiting" : "inbox-item", dataset: { conversation: item.conversation_id } },
        el("strong", { text: item.patient.name }),
        el("span", { class: "meta", text: ` · ${waited(item)}${item.owner ? ` · with ${item.owner.name}` : ""}` }),
        last ? el("p", { class: "preview", text: `${last.sender_name || last.sender_id}: ${last.body}` }) : null,
        el("div", { class: "row" },
          item.owner ? null : el("button", { type: "button", class: "small claim", text: "Claim", onclick: () => this.act("conversation:claim", item) }),
          el("button", { type: "button", class: "small", text: "Open", onclick: () => this.open(item) }),
          item.owner ? el("button", { type: "button", class: "small release", text: "Release", onclick: () => this.act("conversation:release", item) }) : null,
          el("button", { type: "button", class: "small transfer", text: "Transfer", onclick: () => this.transfer(item) }))));
    }
    if (!answer.conversations.length) list.append(el("li", { class: "meta", text: "Nothing here." }));
  }

  async act(event, item) {
    const answer = await this.call(event, { conversation_id: item.conversation_id });
    if (!answer.ok) this.banner(answer.error.message);
    await this.refresh();
  }

  transfer(item) {
    const form = $("#transfer-form");
    form.dataset.conversation = item.conversation_id;
    $("#transfer-to").value = "";
    $("#transfer-note").value = "";
    show(form, true);
    $("#transfer-to").focus();
  }

  async submitTransfer(event) {
    event.preventDefault();
    const form = $("#transfer-form");
    const target = $("#transfer-to").value.trim();
    if (!target) return;
    const toPool = this.pools.some((p) => p.id === target) || target.startsWith("pool:");
    const payload = { conversation_id: form.dataset.conversation, note: $("#transfer-note").value.trim() || null };
    if (toPool) payload.to_pool = target.replace(/^pool:/, ""); else payload.to_user = target;
    const answer = await this.call("conversation:transfer", payload);
    if (!answer.ok) { this.banner(answer.error.message); return; }
    show(form, false);
    await this.refresh();
  }

  // A staff-only note, as the conversation shows it (the SDK keeps them apart).
  noteView(note) {
    return el("li", { class: "message note", dataset: { note: String(note.seq) } },
      el("span", { class: "meta", text: `staff note · ${note.sender_name || note.sender_id} · ${time(note.created_at)}` }),
      el("p", { class: "body", text: note.body }));
  }
}
