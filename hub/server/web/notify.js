// "Notify me on this device": a Web Push subscription through the console's service
// worker (sw.js), registered with the hub (push:register), so this browser hears of
// messages and appointment changes while no tab holds a connection.
import { $, show } from "./dom.js";

const DEVICE_KEY = "hub-console-push-device";

export class Notify {
  constructor(client, banner) {
    this.client = client; // () => the signed-in HubClient
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
    if ((await Notification.requestPermission()) !== "granted") return fail("Notifications are blocked for this site.");
    let deviceId;
    try {
      const registration = await navigator.serviceWorker.register("/console/sw.js", { scope: "/console/" });
      deviceId = await this.client().registerWebPush(registration, navigator.language);
    } catch (error) {
      return fail(error.code === "unavailable" ? "Notifications are not set up on this hub." : `Not registered: ${error.message}`);
    }
    localStorage.setItem(DEVICE_KEY, deviceId);
    document.body.dataset.push = "on";
  }

  async disable() {
    const device_id = localStorage.getItem(DEVICE_KEY);
    localStorage.removeItem(DEVICE_KEY);
    if (device_id) await this.client().unregisterPush(device_id).catch(() => {});
    const registration = await navigator.serviceWorker.getRegistration("/console/");
    const subscription = registration && (await registration.pushManager.getSubscription());
    if (subscription) await subscription.unsubscribe();
    document.body.dataset.push = "off"; // the hub has forgotten this device by now
  }
}
