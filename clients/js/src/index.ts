export { HubClient } from "./client.js";
export type {
  ChatMessage,
  ConnectionState,
  ConversationView,
  HubClientOptions,
  OutgoingMessage,
  Status,
  UploadOptions,
} from "./client.js";
export { HubError } from "./errors.js";
export type { HubErrorCode } from "./errors.js";
export { IndexedDBStorage, MemoryStorage } from "./storage.js";
export type { Storage } from "./storage.js";
export type { Store } from "./store.js";
export * from "./protocol.js";
