import { defineConfig } from "vitest/config";

// Workspace packages resolve to their TypeScript sources through the "mrezhen-source" export
// condition, so tests never run against a stale build. Vite's own server defaults follow it.
export default defineConfig({
  ssr: { resolve: { conditions: ["mrezhen-source", "module", "node", "development|production"] } },
  test: {
    globalSetup: ["./vitest.global-setup.ts"],
    include: ["apps/*/test/**/*.test.ts", "packages/*/test/**/*.test.ts"],
    testTimeout: 20_000,
    hookTimeout: 30_000,
    // Network tests bind real ports and Redis tests share one server: files run in parallel
    // worker processes, tests inside a file run in order.
    pool: "forks",
    // Under CI a JSON report too, from which .ci/run prints its plain "N passed, N failed" line.
    reporters:
      process.env["CI"] === "true"
        ? ["default", ["json", { outputFile: "test-results.json" }]]
        : ["default"],
  },
});
