/**
 * The Redis engine: the engine ports of @mrezhen/engine on Redis, for any number of nodes.
 * See engine.ts for connections and health, keys.ts for the key layout, scripts.ts for the Lua.
 */

export type { AppendStep } from "./cluster-messages.js";
export {
  createRedisEngine,
  haltRedisEngineForTests,
  injectClusterFaultForTests,
  injectGroupFanOutFaultForTests,
  type Logger,
  type RedisEngineOptions,
} from "./engine.js";
export { DEFAULT_GROUP_FAN_OUT, type GroupFanOutOptions } from "./groups.js";
