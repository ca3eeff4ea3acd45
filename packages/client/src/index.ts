/**
 * @mrezhen/client: the Mrezhen client SDK for browsers and Node ≥ 20. No runtime dependencies.
 *
 * @example
 * import { MrezhenClient, webStorage } from "@mrezhen/client";
 * const client = new MrezhenClient({ url: "wss://chat.example/ws", getToken, storage: webStorage(localStorage) });
 * client.on("message", (message) => console.log(message.from, message.content));
 * await client.connect();
 * await client.sendMessage({ to: "bob", content: "hello" });
 */
export { BACKOFF_MAX_MS, BACKOFF_MIN_MS, backoffDelay } from "./backoff.js";
export {
  ClientError,
  type ClientEvents,
  type ClientOptions,
  type ConnectionState,
  MrezhenClient,
  type OutboxEntry,
  type Peer,
  type WebSocketConstructor,
  type WebSocketLike,
} from "./client.js";
export { type ClientStorage, memoryStorage, type WebStorageLike, webStorage } from "./storage.js";
export type {
  Ack,
  ChatMessage,
  Conversation,
  GroupAck,
  GroupEvent,
  GroupHistoryPage,
  GroupInfo,
  GroupMessage,
  HistoryPage,
  Presence,
  ReadBy,
  Receipt,
  Synced,
  Typing,
  WireError,
} from "./wire.js";
