// "Notify me on this device": a Web Push subscription through the console's service
// worker (sw.js), registered with the hub (push:register), so this browser hears of
// messages and appointment changes while no tab holds a connection.
import { $, show } from "./dom.js";

const DEVICE_KEY = "hub-console-push-device";

function keyBytes(base64url) {
  const padded = base64url.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (base64url.length % 4)) % 4);
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}

export class Notify {
  constructor(call, banner) {
    this.call = call;
    this.banner = banner;
  }

  supported() {
    return "serviceWorker" in navigator && "PushManager" in window && "Notification" in window;
  }

  bind() {
    const toggle = $("#notify");
    show($("#notify-label"), this.supported());
    if (!this.supported()) return;
    toggle.checked = Boolean(localStorage.getItem(DEVICE_KEY));
    toggle.addEventListener("change", () => (toggle.checked ? this.enable() : this.disable()));
  }

  // After each (re)connection: the hub learns again of this device (last seen, and the
  // subscription the browser may have renewed).
  async refresh() {
    if (this.supported() && localStorage.getItem(DEVICE_KEY)) await this.enable(true);
  }

  async enable(quiet = false) {
    const toggle = $("#notify");
    const fail = (text) => {
      toggle.checked = false;
      localStorage.removeItem(DEVICE_KEY);
      document.body.dataset.push = "off";
      if (!quiet) this.banner(text);
    };
    const key = await fetch("/api/v1/push/vapid-public-key").then((r) => r.json()).catch(() => null);
    if (!key || !key.ok) return fail("Notifications are not set up on this hub.");
    if ((await Notification.requestPermission()) !== "granted") return fail("Notifications are blocked for this site.");
    let subscription;
    try {
      const registration = await navigator.serviceWorker.register("/console/sw.js", { scope: "/console/" });
      subscription = (await registration.pushManager.getSubscription())
        || (await registration.pushManager.subscribe({ userVisibleOnly: true, applicationServerKey: keyBytes(key.key) }));
    } catch (error) {
      return fail(`This browser could not subscribe: ${error.message}`);
    }
    const answer = await this.call("push:register", {
      kind: "webpush", subscription: subscription.toJSON(), locale: navigator.language,
    });
    if (!answer.ok) return fail(`Not registered: ${answer.error.message}`);
    localStorage.setItem(DEVICE_KEY, answer.device.id);
    document.body.dataset.push = "on";
  }

  async disable() {
    const device_id = localStorage.getItem(DEVICE_KEY);
    localStorage.removeItem(DEVICE_KEY);
    if (device_id) await this.call("push:unregister", { device_id });
    const registration = await navigator.serviceWorker.getRegistration("/console/");
    const subscription = registration && (await registration.pushManager.getSubscription());
    if (subscription) await subscription.unsubscribe();
    document.body.dataset.push = "off"; // the hub has forgotten this device by now
  }
}
