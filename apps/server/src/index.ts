/** The Mrezhen node, for embedding and tests: `createNode(loadConfig())`. */
export { AuthError, extractToken, type Principal, TokenVerifier } from "./auth/token.js";
export {
  type Config,
  ConfigError,
  DEV_HOST,
  DEV_JWT_SECRET,
  defaults,
  loadConfig,
  otherVariables,
} from "./config.js";
export { createNode, type MrezhenNode, type NodeOptions } from "./node.js";
