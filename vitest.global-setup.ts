import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";

/**
 * Builds the workspace once before the tests: tests that run a node, the token tool or the
 * cluster as real processes (kill -9, signals, exit codes) run the compiled JavaScript, exactly
 * what `pnpm start` runs. Incremental, so a second run costs about a second.
 */
export default function setup(): void {
  const root = fileURLToPath(new URL(".", import.meta.url));
  execFileSync(
    process.execPath,
    [`${root}node_modules/typescript/bin/tsc`, "-b", "tsconfig.build.json"],
    {
      cwd: root,
      stdio: "inherit",
    },
  );
}
