// Attachments in the console: upload from the composer (file picker or paste) with
// progress, the checks' outcome, thumbnails inline, an image viewer, PDF downloads.
// Files go over HTTP (POST .../attachments), never over the socket; downloads use the
// short-lived signed links of `attachment:url`, so an <img> can load them.
import { $, clear, el, show } from "./dom.js";

const ACCEPT = "image/jpeg,image/png,image/heic,image/heif,image/webp,application/pdf,.heic,.heif";
const LINK_MARGIN_MS = 30_000; // a link this close to expiry is asked for again

export function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${Math.round(bytes / 1024)} KB`;
  return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
}

export class Attachments {
  constructor(client, banner) {
    this.client = client; // () => the signed-in HubClient
    this.banner = banner;
    this.tray = new Map(); // local key -> {name, progress, attachment, error}
    this.links = new Map(); // "id" or "id/thumbnail" -> {path, expires}
  }

  bind() {
    const picker = $("#file-picker");
    picker.setAttribute("accept", ACCEPT);
    $("#attach").addEventListener("click", () => picker.click());
    picker.addEventListener("change", () => {
      for (const file of picker.files) this.upload(file);
      picker.value = "";
    });
    $("#body").addEventListener("paste", (event) => {
      const files = [...(event.clipboardData?.files || [])];
      if (!files.length) return;
      event.preventDefault();
      for (const file of files) this.upload(file);
    });
    $("#viewer-close").addEventListener("click", () => $("#viewer").close());
  }

  setConversation(conversation_id) {
    if (conversation_id !== this.conversation_id) this.tray.clear();
    this.conversation_id = conversation_id;
    this.render();
  }

  // Uploads in progress, waiting for their checks, or refused: what the send button waits on.
  busy() {
    return [...this.tray.values()].some((item) => !item.error && item.attachment?.state !== "released");
  }

  ready() {
    return [...this.tray.values()].filter((item) => item.attachment?.state === "released").map((item) => item.attachment.id);
  }

  clearSent() {
    for (const [key, item] of this.tray) if (item.attachment?.state === "released") this.tray.delete(key);
    this.render();
  }

  async upload(file) {
    const conversation_id = this.conversation_id;
    if (!conversation_id) return;
    const key = crypto.randomUUID();
    const item = { name: file.name || "pasted image", progress: 0, attachment: null, error: null };
    this.tray.set(key, item);
    this.render();
    try {
      item.attachment = await this.client().upload(conversation_id, file, {
        name: item.name,
        onProgress: (fraction) => { item.progress = fraction; this.render(); },
      });
    } catch (error) {
      item.error = error.message;
    }
    this.render();
  }

  // The SDK's uploads store (attachment:updated): an upload's checks are done.
  updated(uploads) {
    for (const item of this.tray.values()) {
      const now = item.attachment && uploads[item.attachment.id];
      if (now) item.attachment = now;
    }
    this.render();
  }

  render() {
    const tray = $("#tray");
    clear(tray);
    show(tray, this.tray.size > 0);
    for (const [key, item] of this.tray) {
      const state = item.error ? "rejected" : item.attachment ? item.attachment.state : "uploading";
      const label = item.error ? `refused: ${item.error}`
        : !item.attachment ? `uploading ${Math.round(item.progress * 100)}%`
        : state === "pending" ? "checking..."
        : state === "rejected" ? `rejected: ${item.attachment.reason}`
        : `ready · ${size(item.attachment.size)}`;
      tray.append(el("li", { class: `upload ${state}`, dataset: { state } },
        el("span", { class: "name", text: item.attachment?.name || item.name }),
        !item.attachment && !item.error ? el("progress", { max: "1", value: String(item.progress) }) : null,
        el("span", { class: "meta", text: ` ${label}` }),
        el("button", { type: "button", class: "small", text: "Remove", "aria-label": `Remove ${item.name}`,
          onclick: () => { this.tray.delete(key); this.render(); } })));
    }
  }

  // A message's attachments: thumbnails for images (click: the viewer), links for the rest.
  view(message) {
    if (!message.attachments?.length) return null;
    const box = el("div", { class: "attachments" });
    for (const attachment of message.attachments) {
      if (attachment.thumbnail) {
        const image = el("img", { class: "thumb", alt: attachment.name, width: thumbWidth(attachment), dataset: { attachment: attachment.id } });
        this.link(attachment.id, true).then((path) => { if (path) image.src = path; });
        box.append(el("button", { type: "button", class: "thumb-button", title: attachment.name, onclick: () => this.open(attachment) }, image));
      } else {
        const link = el("a", { class: "file", href: "#", dataset: { attachment: attachment.id }, text: `${attachment.name} (${size(attachment.size)})` });
        link.addEventListener("click", async (event) => {
          event.preventDefault();
          const path = await this.link(attachment.id, false);
          if (path) location.assign(path); // Content-Disposition: attachment: a download, the page stays
        });
        box.append(link);
      }
    }
    return box;
  }

  async open(attachment) {
    const path = await this.link(attachment.id, false);
    if (!path) return;
    $("#viewer-title").textContent = attachment.name;
    $("#viewer-image").src = path;
    $("#viewer-image").alt = attachment.name;
    $("#viewer").showModal();
  }

  async link(id, thumbnail) {
    const key = thumbnail ? `${id}/thumbnail` : id;
    const known = this.links.get(key);
    if (known && known.expires - Date.now() > LINK_MARGIN_MS) return known.path;
    let answer;
    try {
      answer = await this.client().attachmentUrl(id, thumbnail);
    } catch (error) {
      this.banner(`Attachment unavailable: ${error.message}`);
      return null;
    }
    this.links.set(key, { path: answer.path, expires: Date.parse(answer.expires_at) });
    return answer.path;
  }
}

function thumbWidth(attachment) {
  if (!attachment.width || !attachment.height) return "160";
  const scale = Math.min(1, 160 / Math.max(attachment.width, attachment.height));
  return String(Math.round(attachment.width * scale));
}
