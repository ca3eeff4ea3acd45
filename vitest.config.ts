import { defineConfig } from "vitest/config";

// Workspace packages resolve to their TypeScript sources through the "mrezhen-source" export
// condition, so tests never run against a stale build.
const conditions = ["mrezhen-source", "import", "node", "default"];

export default defineConfig({
  resolve: { conditions },
  ssr: { resolve: { conditions } },
  test: {
    include: ["apps/*/test/**/*.test.ts", "packages/*/test/**/*.test.ts"],
    testTimeout: 20_000,
    hookTimeout: 30_000,
    // Network tests bind real ports and Redis tests share one server: files run in parallel
    // workers, tests inside a file run in order.
    pool: "forks",
    reporters: ["default"],
  },
});
