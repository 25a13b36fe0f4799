// The console's service worker: shows the hub's pushes (a title, a line of text and
// ids: never a message's content) and opens the right screen when one is clicked.
self.addEventListener("push", (event) => {
  let push = {};
  try { push = event.data ? event.data.json() : {}; } catch { /* not JSON: a bare notice */ }
  event.waitUntil(self.registration.showNotification(push.title || "Clinic", {
    body: push.body || "",
    tag: push.tag, // one line per conversation or appointment
    renotify: Boolean(push.tag),
    data: push.data || {},
  }));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const data = event.notification.data || {};
  const target = data.conversation_id
    ? `/console/#conversation=${encodeURIComponent(data.conversation_id)}`
    : "/console/#notifications";
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    for (const client of windows) {
      if (new URL(client.url).pathname.startsWith("/console/")) {
        client.postMessage({ open: data });
        return client.focus();
      }
    }
    return self.clients.openWindow(target);
  })());
});
