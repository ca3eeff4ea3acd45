/**
 * Engine ports and the memory engine. See ports.ts for the guarantees every engine keeps, and
 * `@mrezhen/engine/contract` for the suites that check them.
 */
export {
  createMemoryEngine,
  DEFAULT_RETENTION,
  type MemoryEngineOptions,
} from "./memory/engine.js";
export { conversationKey, mergeByRecency } from "./memory/messages.js";
export { memoryStoredBytes } from "./memory/packed-log.js";
export * from "./ports.js";
