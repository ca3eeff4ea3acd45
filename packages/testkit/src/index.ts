/** Test helpers shared by every package: tokens, a WebSocket test client, Redis (and Redis Cluster), ports. */
export { type CloseInfo, type Frame, TestClient, UpgradeRefused } from "./client.js";
export { eventually, freePort } from "./net.js";
export {
  commandsOf,
  deletePrefix,
  findLocalRedis,
  LOCAL_REDIS_URL,
  type LocalRedis,
  ownRedisServer,
  redisForTests,
  SHARED_TEST_REDIS,
  type TestRedis,
} from "./redis.js";
export { redisClusterForTests, spawnRedisServer, type TestRedisCluster } from "./redis-cluster.js";
export { DEV_JWT_ISSUER, DEV_JWT_SECRET, mintToken, type TokenOptions } from "./tokens.js";
