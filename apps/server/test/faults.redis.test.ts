import { type ChildProcess, spawn } from "node:child_process";
import { randomUUID } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  eventually,
  type Frame,
  freePort,
  mintToken,
  redisForTests,
  TestClient,
} from "@mrezhen/testkit";
import { afterAll, describe, expect, it, onTestFinished } from "vitest";
import { connectTo, spawnNode, startNode } from "./helpers.js";

const redis = await redisForTests();
afterAll(() => redis?.close());

/** The next presence frame about `userId` (skipping others, such as one's own). */
async function presenceOf(client: TestClient, userId: string, timeoutMs = 3000): Promise<Frame> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const frame = await client.next("presence", Math.max(1, deadline - Date.now()));
    if (frame["userId"] === userId) return frame;
  }
}

const prefix = () => `${redis?.prefix ?? ""}${randomUUID().slice(0, 6)}:`;

describe.skipIf(!redis)("node failure", () => {
  it("shows the users of a node killed with kill -9 offline everywhere within 15 s, losing nothing queued", async () => {
    const env = { REDIS_URL: redis?.url ?? "", REDIS_KEY_PREFIX: prefix() };
    const survivor = await spawnNode({ ...env, NODE_ID: "survivor" });
    const victim = await spawnNode({ ...env, NODE_ID: "victim" });
    const bob = await connectTo(survivor.wsUrl, "bob");
    const alice = await connectTo(victim.wsUrl, "alice");
    expect(await presenceOf(bob, "alice")).toMatchObject({ status: "online" });
    for (let i = 0; i < 3; i++) {
      alice.send({ type: "direct_message", to: "carol", content: `before the crash ${i}` });
      expect((await alice.next("message_ack"))["status"]).toBe("queued");
    }

    const killedAt = Date.now();
    victim.child.kill("SIGKILL");
    const offline = await presenceOf(bob, "alice", 15_000);
    const cleanupMs = Date.now() - killedAt;
    console.log(`[measure] presence cleanup after kill -9: ${cleanupMs} ms`);
    expect(offline).toMatchObject({ userId: "alice", status: "offline", onlineUsers: ["bob"] });
    expect(cleanupMs).toBeLessThan(15_000);

    const carol = await connectTo(survivor.wsUrl, "carol");
    const queued = carol.drain("direct_message");
    expect(queued.map((f) => (f["message"] as { content: string }).content)).toEqual([
      "before the crash 0",
      "before the crash 1",
      "before the crash 2",
    ]);
  }, 30_000);

  it("leaves no ghosts when a killed node restarts with the same NODE_ID", async () => {
    const env = { REDIS_URL: redis?.url ?? "", REDIS_KEY_PREFIX: prefix() };
    const survivor = await spawnNode({ ...env, NODE_ID: "survivor" });
    const victim = await spawnNode({ ...env, NODE_ID: "phoenix" });
    const bob = await connectTo(survivor.wsUrl, "bob");
    await connectTo(victim.wsUrl, "alice");
    expect(await presenceOf(bob, "alice")).toMatchObject({ status: "online" });

    victim.child.kill("SIGKILL");
    await victim.exited;
    const restartedAt = Date.now();
    await spawnNode({ ...env, NODE_ID: "phoenix" });
    expect(await presenceOf(bob, "alice", 5_000)).toMatchObject({ status: "offline" });
    console.log(
      `[measure] ghost cleared by the restarted node after ${Date.now() - restartedAt} ms`,
    );
  }, 30_000);
});

describe.skipIf(!redis)("graceful drain", () => {
  it("on SIGTERM: unready at once, in-flight messages acked or refused, 1012, exit 0; acked ones arrive via another node", async () => {
    const env = {
      REDIS_URL: redis?.url ?? "",
      REDIS_KEY_PREFIX: prefix(),
      SHUTDOWN_TIMEOUT_MS: "5000",
      RATE_LIMIT_MESSAGES: "10000",
    };
    const draining = await spawnNode({ ...env, NODE_ID: "draining" });
    const staying = await spawnNode({ ...env, NODE_ID: "staying" });
    const alice = await connectTo(draining.wsUrl, "alice");
    // A client that stops reading holds the drain open long enough to watch /ready.
    const slow = await connectTo(draining.wsUrl, "slow");
    slow.socket.pause();

    for (let i = 0; i < 200; i++)
      alice.send({ type: "direct_message", to: "bob", content: `in flight ${i}` });
    draining.child.kill("SIGTERM");
    await eventually(
      async () => expect((await fetch(`${draining.url}/ready`)).status).toBe(503),
      2000,
    );
    expect((await alice.closed).code).toBe(1012);
    slow.socket.resume();
    expect(await draining.exited).toBe(0);

    // Each message was acked (so stored) or refused with UNAVAILABLE (resend after reconnecting);
    // acked ones all arrive, once, from the other node.
    const acked = alice.received
      .filter((f) => f.type === "message_ack")
      .map((f) => f["messageId"] as string);
    const refusals = alice.received.filter((f) => f.type === "error");
    const refused = refusals.length;
    expect(refusals.every((f) => f["code"] === "UNAVAILABLE")).toBe(true);
    console.log(
      `[measure] drain with 200 sent: ${acked.length} acked, ${refused} refused, ${200 - acked.length - refused} unread`,
    );
    // Sent before the signal, so read during the drain's quiet period: every one is answered.
    expect(acked.length + refused).toBe(200);
    const bob = await connectTo(staying.wsUrl, "bob");
    const delivered = bob.drain("direct_message").map((f) => (f["message"] as { id: string }).id);
    expect(delivered).toEqual(acked);
  }, 30_000);
});

describe("Redis outage", () => {
  it("stays up, refuses to ack, reports unready, and recovers by itself when Redis returns", async () => {
    const server = await ownRedis();
    const env = { REDIS_URL: server.url, REDIS_KEY_PREFIX: "outage:" };
    const a = await startNode({ ...env, NODE_ID: "a" });
    const b = await startNode({ ...env, NODE_ID: "b" });
    const alice = await a.connect("alice");
    const bob = await b.connect("bob");

    server.stop();
    await eventually(async () => expect((await fetch(`${a.url}/ready`)).status).toBe(503), 8000);
    expect(await (await fetch(`${b.url}/ready`)).json()).toMatchObject({ status: "unavailable" });
    expect((await fetch(`${a.url}/health`)).status).toBe(200);

    alice.send({ type: "direct_message", to: "bob", content: "during the outage" });
    expect(["UNAVAILABLE", "INTERNAL_ERROR"]).toContain(
      (await alice.next("error", 10_000))["code"],
    );
    await alice.expectNone("message_ack", 200);
    alice.send({ type: "ping" });
    await alice.next("pong"); // the connection survived
    // The failed commands are counted, for alerts on a Redis in trouble.
    const scrape = await (await fetch(`${a.url}/metrics`)).text();
    const failed =
      /^mrezhen_redis_command_errors_total\{[^}]*kind="unavailable"[^}]*\} (\d+)$/m.exec(scrape);
    expect(Number(failed?.[1])).toBeGreaterThan(0);
    expect(scrape).toMatch(/^mrezhen_engine_up\{[^}]*\} 0$/m);

    const restartedAt = Date.now();
    server.start();
    await eventually(async () => {
      expect((await fetch(`${a.url}/ready`)).status).toBe(200);
      expect((await fetch(`${b.url}/ready`)).status).toBe(200);
    }, 15_000);
    const readyMs = Date.now() - restartedAt;

    // Cross-node delivery works again, with no restart of either node.
    let delivered = false;
    while (!delivered && Date.now() - restartedAt < 10_000) {
      alice.send({ type: "direct_message", to: "bob", content: "after the outage" });
      const answer = await alice.next(["message_ack", "error"]);
      delivered = answer.type === "message_ack" && answer["status"] === "delivered";
      if (!delivered) await new Promise((resolve) => setTimeout(resolve, 200));
    }
    expect(delivered).toBe(true);
    const message = await bob.next("direct_message", 5000);
    expect((message["message"] as { content: string }).content).toBe("after the outage");
    const deliveredMs = Date.now() - restartedAt;
    console.log(
      `[measure] after Redis restart: ready in ${readyMs} ms, cross-node delivery in ${deliveredMs} ms`,
    );
    expect(deliveredMs).toBeLessThan(10_000);

    // Presence was re-asserted: both users are online again for everyone.
    alice.send({ type: "get_online_users" });
    expect(((await alice.next("online_users"))["users"] as string[]).sort()).toEqual([
      "alice",
      "bob",
    ]);
  }, 60_000);
});

describe("Redis down at start", () => {
  it("starts anyway, unready and refusing connections with 1013, and serves once Redis answers", async () => {
    const server = await ownRedis({ running: false });
    const node = await spawnNode({
      REDIS_URL: server.url,
      REDIS_KEY_PREFIX: "late:",
      NODE_ID: "early",
    });
    const ready = await fetch(`${node.url}/ready`);
    expect(ready.status).toBe(503);
    expect(await ready.json()).toMatchObject({ status: "unavailable" });
    expect((await fetch(`${node.url}/health`)).status).toBe(200);
    // A client that comes now is told to come back later, as during an outage.
    const early = await TestClient.connect(
      `${node.wsUrl}?token=${await mintToken({ sub: "alice" })}`,
    );
    expect((await early.closed).code).toBe(1013);

    const startedAt = Date.now();
    server.start();
    await server.answering();
    await eventually(
      async () => expect((await fetch(`${node.url}/ready`)).status).toBe(200),
      10_000,
    );
    console.log(`[measure] Redis started after the node: ready ${Date.now() - startedAt} ms later`);
    expect(node.child.exitCode).toBeNull();

    const alice = await connectTo(node.wsUrl, "alice");
    const bob = await connectTo(node.wsUrl, "bob");
    alice.send({ type: "direct_message", to: "bob", content: "Redis came late" });
    expect(await alice.next("message_ack")).toMatchObject({ status: "delivered" });
    expect((await bob.next("direct_message"))["message"]).toMatchObject({
      from: "alice",
      content: "Redis came late",
    });
  }, 30_000);
});

/** A redis-server of this test's own, with AOF in a temp dir, that can be stopped and started. */
async function ownRedis(
  options: { running?: boolean } = {},
): Promise<{ url: string; stop(): void; start(): void; answering(): Promise<void> }> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "mrezhen-redis-"));
  let child: ChildProcess | undefined;
  const start = () => {
    child = spawn(
      "redis-server",
      [
        "--port",
        String(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--dir",
        dir,
      ],
      { stdio: "ignore" },
    );
  };
  const stop = () => child?.kill("SIGKILL");
  onTestFinished(() => {
    stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const url = `redis://127.0.0.1:${port}`;
  const { Redis } = await import("ioredis");
  const answering = () =>
    eventually(async () => {
      const probe = new Redis(url, {
        lazyConnect: true,
        retryStrategy: () => null,
        maxRetriesPerRequest: 0,
      });
      probe.on("error", () => {}); // a refused connect is expected until redis-server listens
      try {
        await probe.connect();
        await probe.ping();
      } finally {
        probe.disconnect();
      }
    }, 5000);
  if (options.running !== false) {
    start();
    await answering();
  }
  return { url, stop, start, answering };
}
