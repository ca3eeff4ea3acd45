import { type ChildProcess, spawn } from "node:child_process";
import { Writable } from "node:stream";
import { fileURLToPath } from "node:url";
import type { Engine } from "@mrezhen/engine";
import {
  type Config,
  createNode,
  loadConfig,
  type MrezhenNode,
  type NodeOptions,
} from "@mrezhen/server";
import { eventually, freePort, mintToken, TestClient, type TokenOptions } from "@mrezhen/testkit";
import { pino } from "pino";
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
  options: { engine?: Engine; closeWithTest?: boolean; logger?: NodeOptions["logger"] } = {},
): Promise<TestNode> {
  const config: Config = loadConfig({
    WS_PORT: "0",
    HOST: "127.0.0.1",
    LOG_LEVEL: "silent",
    SHUTDOWN_TIMEOUT_MS: "2000",
    ...env,
  });
  const node = await createNode({
    config,
    ...(options.engine === undefined ? {} : { engine: options.engine }),
    ...(options.logger === undefined ? {} : { logger: options.logger }),
  });
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

/** A node running as a real child process (the built `dist/main.js`), for kill -9 and signals. */
export interface NodeProcess {
  readonly url: string;
  readonly wsUrl: string;
  readonly child: ChildProcess;
  readonly exited: Promise<number | null>;
}

/** Starts `node dist/main.js` on a free port and waits until /health answers. Killed when the test ends. */
export async function spawnNode(env: Record<string, string>): Promise<NodeProcess> {
  const port = await freePort();
  const main = fileURLToPath(new URL("../dist/main.js", import.meta.url));
  const child = spawn(process.execPath, [main], {
    env: { ...process.env, LOG_LEVEL: "warn", HOST: "127.0.0.1", WS_PORT: String(port), ...env },
    stdio: ["ignore", "ignore", "inherit"],
  });
  onTestFinished(() => void child.kill("SIGKILL"));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  const url = `http://127.0.0.1:${port}`;
  await eventually(async () => {
    const response = await fetch(`${url}/health`);
    if (!response.ok) throw new Error(`health ${response.status}`);
  }, 10_000);
  return { url, wsUrl: `ws://127.0.0.1:${port}/ws`, child, exited };
}

/**
 * A WebSocket upgrade request for /ws with `token` in the query (already URL-safe), as raw
 * HTTP/1.1 for a test that writes it on a TCP socket of its own.
 */
export function upgradeRequest(token: string): string {
  return (
    `GET /ws?token=${token} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n` +
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
    "Sec-WebSocket-Version: 13\r\n\r\n"
  );
}

/** Connects `userId` to any node URL and waits until the connection is online. */
export async function connectTo(wsUrl: string, userId: string): Promise<TestClient> {
  const client = await TestClient.connect(`${wsUrl}?token=${await mintToken({ sub: userId })}`);
  onTestFinished(() => void client.close());
  client.send({ type: "ping" });
  await client.next("pong");
  return client;
}

/** A pino logger at `level` whose lines are kept, parsed, in `lines`. */
export function capturedLog(level = "warn"): {
  logger: NonNullable<NodeOptions["logger"]>;
  lines: Record<string, unknown>[];
} {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk, _encoding, done) {
      for (const line of chunk.toString().split("\n").filter(Boolean)) {
        lines.push(JSON.parse(line) as Record<string, unknown>);
      }
      done();
    },
  });
  return { logger: pino({ level }, stream), lines };
}
