import type { Engine } from "@mrezhen/engine";
import { type Config, createNode, loadConfig, type MrezhenNode } from "@mrezhen/server";
import { mintToken, TestClient, type TokenOptions } from "@mrezhen/testkit";
import { onTestFinished } from "vitest";

export interface TestNode {
  readonly node: MrezhenNode;
  /** http://127.0.0.1:<port> */
  readonly url: string;
  /** ws://127.0.0.1:<port>/ws */
  readonly wsUrl: string;
  /** Connects `userId` with a fresh valid token; closed when the test ends. */
  connect(
    userId: string,
    options?: Partial<TokenOptions> & { query?: string },
  ): Promise<TestClient>;
}

/**
 * Starts a real node on a free port (memory engine unless one is given) and registers its
 * shutdown with the current test, so nothing outlives a failure.
 */
export async function startNode(
  env: Record<string, string> = {},
  options: { engine?: Engine; closeWithTest?: boolean } = {},
): Promise<TestNode> {
  const config: Config = loadConfig({
    WS_PORT: "0",
    HOST: "127.0.0.1",
    LOG_LEVEL: "silent",
    SHUTDOWN_TIMEOUT_MS: "2000",
    ...env,
  });
  const node = await createNode(
    options.engine === undefined ? { config } : { config, engine: options.engine },
  );
  const url = await node.listen();
  if (options.closeWithTest !== false) onTestFinished(() => node.close());
  const wsUrl = `${url.replace(/^http/, "ws")}/ws`;
  return {
    node,
    url,
    wsUrl,
    async connect(userId, tokenOptions = {}) {
      const token = await mintToken({ sub: userId, ...tokenOptions });
      const client = await TestClient.connect(`${wsUrl}?token=${token}${tokenOptions.query ?? ""}`);
      onTestFinished(() => void client.close());
      // The first answer comes only once the connection is online (registered, subscribed,
      // queue flushed): after this ping, messages to this user reach it live.
      client.send({ type: "ping" });
      await client.next("pong");
      return client;
    },
  };
}
