import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import { findLocalRedis, SHARED_TEST_REDIS } from "./packages/testkit/src/redis.ts";

/**
 * Before the tests:
 * - builds the workspace once: tests that run a node, the token tool or the cluster as real
 *   processes (kill -9, signals, exit codes) run the compiled JavaScript, exactly what
 *   `pnpm start` runs (the SDK bundle included). Incremental, so a second run costs about a
 *   second;
 * - finds the Redis the Redis tests use when REDIS_URL is not set (a local one on
 *   127.0.0.1:6379, or a private redis-server started here and stopped after the run), so that
 *   `pnpm test` as written tests the production engine. The test files run in separate worker
 *   processes, forked after this: they get its URL through the environment, and share one
 *   server (each file uses a key prefix of its own) instead of starting one each.
 */
export default async function setup(): Promise<(() => Promise<void>) | undefined> {
  const root = fileURLToPath(new URL(".", import.meta.url));
  execFileSync(
    process.execPath,
    [`${root}node_modules/typescript/bin/tsc`, "-b", "tsconfig.build.json"],
    {
      cwd: root,
      stdio: "inherit",
    },
  );
  // The SDK bundle the demo page loads (/sdk/client.js), as `pnpm start` makes it.
  execFileSync(process.execPath, [`${root}packages/client/scripts/bundle.mjs`], {
    cwd: root,
    stdio: "inherit",
  });
  if (process.env["REDIS_URL"]) return undefined;
  const redis = await findLocalRedis();
  if (redis === undefined) return undefined; // each file tries testcontainers, then skips loudly
  process.env[SHARED_TEST_REDIS] = redis.url;
  console.log(`Redis tests use ${redis.url} (${redis.source}); set REDIS_URL to choose another.`);
  return () => redis.stop();
}
