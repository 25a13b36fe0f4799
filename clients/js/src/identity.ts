// What the SDK reads from a token and makes up on its own: whose data this is, the
// hub's origin, client ids. A token's claims are read, never verified: the hub does that.

// Unique per message: time, then randomness (React Native may lack crypto).
export function newClientId(): string {
  const bytes = new Uint8Array(10);
  if (globalThis.crypto?.getRandomValues) globalThis.crypto.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i += 1) bytes[i] = Math.floor(Math.random() * 256);
  return `c_${Date.now().toString(36)}_${[...bytes].map((b) => b.toString(16).padStart(2, "0")).join("")}`;
}

function claims(token: string): Record<string, unknown> {
  try {
    const part = token.split(".")[1] ?? "";
    const json = decodeURIComponent(
      [...atob(part.replace(/-/g, "+").replace(/_/g, "/"))].map((c) => `%${c.charCodeAt(0).toString(16).padStart(2, "0")}`).join(""),
    );
    return JSON.parse(json) as Record<string, unknown>;
  } catch {
    return {};
  }
}

export function subjectOf(token: string): string | undefined {
  const sub = claims(token).sub;
  return typeof sub === "string" ? sub : undefined;
}

// Whose data this is: the hub, the clinic and the person (not verified: the hub does that).
export function ownerOf(url: string, token: string): string {
  const { sub, tenant, iss } = claims(token);
  return JSON.stringify([originOf(url), String(iss ?? ""), String(tenant ?? "default"), String(sub ?? "")]);
}

// By hand: React Native's URL implements neither `origin` nor a base argument.
export function originOf(url: string): string {
  return (/^[a-z][a-z0-9+.-]*:\/\/[^/?#]+/i.exec(url)?.[0] ?? url).toLowerCase();
}

export function base64url(text: string): Uint8Array<ArrayBuffer> {
  const padded = text.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - (text.length % 4)) % 4);
  return Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
}
