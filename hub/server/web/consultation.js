// The doctor's consultation panel: transcript in, the assistant's answers out.
// Assistant events reach the doctor's devices only (the hub guarantees it); this panel
// only exists for doctors.
import { $, clear, el } from "./dom.js";

// What "Simulate speech" says, one segment at a time.
const SCRIPT = [
  ["doctor", "Good morning. What brings you in today?"],
  ["patient", "I have had a headache for three days, mostly in the morning."],
  ["doctor", "Any fever, nausea or trouble with your vision?"],
  ["patient", "A little nausea yesterday. No fever. Light bothers me."],
  ["doctor", "Are you taking anything for it?"],
  ["patient", "Ibuprofen twice a day. It helps for a few hours."],
  ["doctor", "Any recent injury, or changes in sleep or stress?"],
  ["patient", "Work has been stressful and I sleep about five hours."],
];

export class Consultation {
  constructor(call, reveal) {
    this.call = call;
    this.reveal = reveal;
    this.id = null;
    this.next = 0; // the next line of SCRIPT
    this.simulating = null;
    this.streams = new Map(); // request_id -> the element its text streams into
    this.early = new Map(); // request_id -> pieces that came before the ask's ack
  }

  bind() {
    $("#join-form").addEventListener("submit", (event) => {
      event.preventDefault();
      this.join($("#join-appointment").value.trim());
    });
    $("#segment-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const text = $("#segment-text").value.trim();
      if (!text) return;
      $("#segment-text").value = "";
      this.append($("#speaker").value, text);
    });
    $("#simulate").addEventListener("click", () => this.simulate());
    $("#end").addEventListener("click", () => this.end());
    $("#auto").addEventListener("change", async (event) => {
      if (!this.id) return;
      const answer = await this.call("assistant:configure", { consultation_id: this.id, auto: event.target.checked });
      if (!answer.ok) this.status(answer.error.message);
    });
    $("#ask-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const question = $("#question").value.trim();
      if (!question || !this.id) return;
      $("#question").value = "";
      const answer = await this.call("assistant:ask", { consultation_id: this.id, question });
      if (!answer.ok) { this.status(answer.error.message); return; }
      this.stream(answer.request_id, $("#answers"), question);
    });
  }

  attach(client) {
    client.on("transcript:new", ({ segment }) => this.show(segment));
    client.on("consultation:ended", () => this.status("The consultation has ended."));
    client.on("assistant:delta", ({ request_id, text }) => this.piece(request_id, text, false));
    client.on("assistant:done", ({ request_id, text }) => this.piece(request_id, text, true));
    client.on("assistant:suggestion", (data) => {
      if (!this.streams.has(data.request_id)) this.stream(data.request_id, $("#suggestions"));
      this.piece(data.request_id, data.text, data.done);
    });
    client.on("assistant:note", (data) => {
      if (!this.streams.has(data.request_id)) this.stream(data.request_id, $("#note"), null, true);
      this.piece(data.request_id, data.text, data.done);
    });
    client.on("assistant:error", ({ request_id, message }) => {
      const target = this.streams.get(request_id);
      if (target) { target.classList.add("failed"); target.querySelector(".text").textContent = message; }
      else this.status(`Assistant: ${message}`);
    });
    // After a reconnect, the segments said meanwhile.
    client.status.subscribe(({ state }) => { if (state === "online" && this.id) this.history(); });
  }

  open(appointmentId) {
    $("#join-appointment").value = appointmentId;
    this.reveal();
    this.join(appointmentId);
  }

  status(text) {
    $("#consultation-status").textContent = text;
  }

  async join(appointmentId) {
    const answer = await this.call("consultation:join", { appointment_id: appointmentId });
    if (!answer.ok) { this.status(`Cannot join: ${answer.error.message}`); return; }
    this.id = answer.consultation.id;
    this.status(`Consultation ${this.id}: ${answer.consultation.status}`);
    clear($("#transcript"));
    await this.history();
  }

  async history() {
    const list = $("#transcript");
    const after = Number(list.lastElementChild?.dataset.seq || 0);
    const answer = await this.call("transcript:history", { consultation_id: this.id, after_seq: after });
    if (answer.ok) for (const segment of answer.segments) this.show(segment);
  }

  show(segment) {
    const list = $("#transcript");
    if (segment.consultation_id !== this.id || list.querySelector(`[data-seq="${segment.seq}"]`)) return;
    list.append(el("li", { class: `segment ${segment.speaker}`, dataset: { seq: String(segment.seq) } },
      el("strong", { text: `${segment.speaker}: ` }), segment.text));
    list.scrollTop = list.scrollHeight;
  }

  async append(speaker, text) {
    if (!this.id) { this.status("Join a consultation first."); return; }
    const answer = await this.call("transcript:append", {
      consultation_id: this.id, client_id: crypto.randomUUID(), speaker, text,
    });
    if (answer.ok) this.show(answer.segment);
    else this.status(`Not added: ${answer.error.message}`);
  }

  simulate() {
    if (this.simulating) {
      clearInterval(this.simulating);
      this.simulating = null;
      $("#simulate").textContent = "Simulate speech";
      return;
    }
    $("#simulate").textContent = "Stop simulation";
    const step = () => {
      if (this.next >= SCRIPT.length) { this.simulate(); return; }
      const [speaker, text] = SCRIPT[this.next];
      this.next += 1;
      this.append(speaker, text);
    };
    step();
    this.simulating = setInterval(step, 1500);
  }

  async end() {
    if (!this.id) return;
    if (this.simulating) this.simulate();
    const answer = await this.call("consultation:end", { consultation_id: this.id });
    if (!answer.ok) { this.status(answer.error.message); return; }
    this.status("Ended. The draft note follows.");
    if (answer.note_request_id) this.stream(answer.note_request_id, $("#note"), null, true);
  }

  stream(requestId, container, question = null, draft = false) {
    const block = el("article", { class: draft ? "answer draft" : "answer", dataset: { request: requestId } },
      question ? el("p", { class: "question", text: question }) : null,
      draft ? el("p", { class: "draft-label", text: "AI draft: review and correct before use" }) : null,
      el("p", { class: "text" }));
    container.prepend(block);
    this.streams.set(requestId, block);
    for (const [text, done] of this.early.get(requestId) || []) this.piece(requestId, text, done);
    this.early.delete(requestId);
    return block;
  }

  piece(requestId, text, done) {
    const block = this.streams.get(requestId);
    if (!block) {
      this.early.set(requestId, [...(this.early.get(requestId) || []), [text, done]]);
      return;
    }
    const target = block.querySelector(".text");
    if (done) { target.textContent = text; block.classList.add("done"); }
    else target.textContent += text;
  }
}
