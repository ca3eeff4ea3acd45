#!/usr/bin/env node
/**
 * The composition root: config → node → listen; SIGTERM/SIGINT → drain → exit 0.
 * A bad configuration stops start-up with one line and exit code 1.
 */
import { ConfigError, loadConfig } from "./config.js";
import { createNode } from "./node.js";

async function main(): Promise<void> {
  let config: ReturnType<typeof loadConfig>;
  try {
    config = loadConfig();
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    process.stderr.write(`mrezhen: configuration error: ${error.message}\n`);
    process.exit(1);
  }
  const node = await createNode({ config });
  const stop = (signal: string) => {
    node.app.log.info({ signal }, "stopping");
    node.close().then(
      () => process.exit(0),
      (error: unknown) => {
        node.app.log.error({ err: error }, "unclean stop");
        process.exit(1);
      },
    );
  };
  process.once("SIGTERM", () => stop("SIGTERM"));
  process.once("SIGINT", () => stop("SIGINT"));
  await node.listen();
}

main().catch((error: unknown) => {
  process.stderr.write(
    `mrezhen: failed to start: ${error instanceof Error ? error.message : String(error)}\n`,
  );
  process.exit(1);
});
