/**
 * Redis going away and coming back, on a redis-server of this test's own (no persistence, so a
 * restart is also a total loss of data: the hardest recovery). Checks: the node keeps running,
 * calls fail fast with EngineUnavailableError, health() follows the connection, and after the
 * restart the node heals by itself: connections, subscriptions (the broker's resubscribe),
 * presence (re-asserted), heartbeat, and scripts (EVALSHA → NOSCRIPT → EVAL).
 */
import { randomUUID } from "node:crypto";
import { EngineUnavailableError } from "@mrezhen/engine";
import { Recorder } from "@mrezhen/engine/contract";
import { eventually, freePort } from "@mrezhen/testkit";
import type { Redis } from "ioredis";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { APPEND } from "../src/scripts.js";
import {
  closeEngines,
  goOnline,
  haveRedisServer,
  killRedisServers,
  rawClient,
  since,
  startEngine,
  startProxy,
  startRedisServer,
  type TcpProxy,
} from "./helpers.js";

describe.skipIf(!haveRedisServer())("redis engine: outage and recovery", () => {
  const clients: Redis[] = [];
  const proxies: TcpProxy[] = [];
  afterEach(async () => {
    await closeEngines();
    await Promise.all(proxies.splice(0).map((proxy) => proxy.close()));
    for (const client of clients.splice(0)) client.disconnect();
    await killRedisServers();
  });
  afterAll(killRedisServers);

  it("fails fast while Redis is down and heals itself when it is back", async () => {
    let server = await startRedisServer();
    const keyPrefix = "outage:";
    const nodeId = `node-${randomUUID().slice(0, 8)}`;
    const logged: { level: string; msg: string | undefined }[] = [];
    const record = (level: string) => (_obj: object, msg?: string) => logged.push({ level, msg });
    const engine = await startEngine({
      url: server.url,
      keyPrefix,
      nodeId,
      heartbeatIntervalMs: 200,
      nodeTtlMs: 1000,
      logger: { info: record("info"), warn: record("warn"), error: record("error") },
    });
    const recorder = new Recorder();
    engine.broker.setHandler(recorder);
    await goOnline(engine, "bob");
    await goOnline(engine, "carol");
    await engine.presence.connect("alice");
    expect(engine.health()).toEqual({ ok: true });

    // --- Redis dies.
    const killed = Date.now();
    await server.kill();
    await eventually(() => expect(engine.health().ok).toBe(false), 3000, 5);
    const detectMs = since(killed);
    await eventually(() =>
      expect(engine.health()).toEqual({ ok: false, reason: "redis unreachable" }),
    );

    const message = {
      id: randomUUID(),
      from: "alice",
      to: "bob",
      content: "during the outage",
      timestamp: new Date().toISOString(),
      senderConnId: "alice-1",
    };
    const attempted = Date.now();
    await expect(engine.messages.append(message)).rejects.toBeInstanceOf(EngineUnavailableError);
    const failMs = since(attempted);
    expect(failMs).toBeLessThan(500);
    await expect(engine.rateLimiter.consume("alice")).rejects.toBeInstanceOf(
      EngineUnavailableError,
    );
    await expect(engine.presence.onlineUsers()).rejects.toBeInstanceOf(EngineUnavailableError);
    await expect(engine.messages.readQueued("bob", 0, 10)).rejects.toBeInstanceOf(
      EngineUnavailableError,
    );
    await expect(engine.broker.subscribe("dave")).rejects.toBeInstanceOf(EngineUnavailableError);
    // carol leaves during the outage: both calls fail, and the engine repairs both later.
    await expect(engine.broker.unsubscribe("carol")).rejects.toBeInstanceOf(EngineUnavailableError);
    await expect(engine.presence.disconnect("carol")).rejects.toBeInstanceOf(
      EngineUnavailableError,
    );
    // Some retries go by (they must not crash anything nor log per attempt).
    await new Promise((resolve) => setTimeout(resolve, 1000));
    expect(engine.health().ok).toBe(false);

    // --- Redis is back on the same port, empty.
    server = await startRedisServer(server.port);
    const restarted = Date.now();
    await eventually(() => expect(engine.health()).toEqual({ ok: true }), 10_000, 5);
    const recoverMs = since(restarted);

    const raw = rawClient(server.url);
    clients.push(raw);
    // Presence re-asserted from the node's own truth: carol's disconnect is not lost either.
    expect((await engine.presence.onlineUsers()).sort()).toEqual(["alice", "bob"]);
    expect(await raw.hgetall(`${keyPrefix}presence:node:${nodeId}`)).toEqual({
      alice: "1",
      bob: "1",
    });
    // The heartbeat resumed by itself.
    await eventually(async () =>
      expect(await raw.pttl(`${keyPrefix}node-alive:${nodeId}`)).toBeGreaterThan(0),
    );
    // Subscriptions were restored, except carol's, dropped as asked during the outage.
    expect(await raw.pubsub("NUMSUB", `${keyPrefix}user:bob`)).toEqual([`${keyPrefix}user:bob`, 1]);
    expect(await raw.pubsub("NUMSUB", `${keyPrefix}broadcast`)).toEqual([
      `${keyPrefix}broadcast`,
      1,
    ]);
    await eventually(async () =>
      expect(await raw.pubsub("NUMSUB", `${keyPrefix}user:carol`)).toEqual([
        `${keyPrefix}user:carol`,
        0,
      ]),
    );

    // A message after recovery reaches the subscribed node. The fresh Redis has no scripts: the
    // append goes EVALSHA → NOSCRIPT → EVAL, once (the reconnect's re-assert already did it for
    // its own script).
    expect(await raw.script("EXISTS", APPEND.sha)).toEqual([0]);
    const sent = Date.now();
    const result = await engine.messages.append({ ...message, id: randomUUID() });
    expect(result).toMatchObject({ status: "delivered", seq: 1 });
    await eventually(() => expect(recorder.eventsFor("bob")).toHaveLength(1), 10_000, 5);
    const deliverMs = since(sent);
    expect(await raw.script("EXISTS", APPEND.sha)).toEqual([1]);
    expect((await engine.rateLimiter.consume("alice")).allowed).toBe(true);

    // One "error" and one "lost" line per connection for the whole outage, not one per retry.
    // The presence mirror may also say that it resyncs (this Redis did come back empty); whether
    // it does depends on which of its resyncs wins the race, so those lines are counted apart.
    const warnings = logged.filter((entry) => entry.level === "warn");
    const dataLoss = warnings.filter((entry) =>
      String(entry.msg).includes("taking a new presence snapshot"),
    );
    expect(warnings.length - dataLoss.length).toBeLessThanOrEqual(4);
    expect(dataLoss.length).toBeLessThanOrEqual(2);
    expect(logged.filter((entry) => entry.level === "error")).toEqual([]);
    expect(logged.filter((entry) => entry.msg === "redis connection restored")).toHaveLength(2);

    console.log(
      `[outage] unhealthy ${detectMs} ms after kill -9; append rejected in ${failMs} ms; ` +
        `healthy again ${recoverMs} ms after redis-server restarted; ` +
        `first message after recovery delivered in ${deliverMs} ms`,
    );
  }, 30_000);

  it("survives losing the subscriber again while it re-subscribes, and re-subscribes later", async () => {
    const server = await startRedisServer();
    const proxy = await startProxy(server.port);
    proxies.push(proxy);
    const keyPrefix = "resubscribe:";
    const engine = await startEngine({ url: proxy.url, keyPrefix });
    const recorder = new Recorder();
    engine.broker.setHandler(recorder);
    await engine.broker.subscribe("alice");
    const publisher = await startEngine({ url: server.url, keyPrefix });
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown) => unhandled.push(reason);
    process.on("unhandledRejection", onUnhandled);
    try {
      // The subscriber's link breaks; its first SUBSCRIBE after reconnecting is cut off too.
      const resubscribeCut = proxy.dropNextSending("$9\r\nsubscribe\r\n");
      proxy.cut();
      proxy.heal();
      await resubscribeCut;
      await eventually(() => expect(engine.health()).toEqual({ ok: true }), 15_000, 10);
      // A second reconnect subscribed again: what is published to alice reaches this node.
      await publisher.broker.publishFrame("alice", '{"type":"typing","from":"bob"}');
      await eventually(() => expect(recorder.framesFor("alice")).toHaveLength(1), 5000);
      const raw = rawClient(server.url);
      clients.push(raw);
      expect(await raw.pubsub("NUMSUB", `${keyPrefix}user:alice`)).toEqual([
        `${keyPrefix}user:alice`,
        1,
      ]);
      // Give a stray rejection of the cut re-subscribe time to surface.
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(unhandled).toEqual([]);
    } finally {
      process.off("unhandledRejection", onUnhandled);
    }
  }, 30_000);

  it("re-asserts presence that other nodes swept during a partition", async () => {
    const server = await startRedisServer();
    const proxy = await startProxy(server.port);
    proxies.push(proxy);
    const keyPrefix = "partition:";
    const timings = { heartbeatIntervalMs: 100, nodeTtlMs: 500 };
    const observer = await startEngine({ url: server.url, keyPrefix, ...timings });
    const recorder = new Recorder();
    observer.broker.setHandler(recorder);
    const nodeId = `cut-${randomUUID().slice(0, 8)}`;
    const cut = await startEngine({ url: proxy.url, keyPrefix, nodeId, ...timings });
    await cut.presence.connect("alice");
    await eventually(() => expect(recorder.presence()).toHaveLength(1));

    // Only this node loses Redis; the observer sweeps it as dead once its key expires.
    const cutAt = Date.now();
    proxy.cut();
    await eventually(() => expect(recorder.presence()).toHaveLength(2), 5000);
    expect(recorder.presence()[1]).toMatchObject({ userId: "alice", status: "offline" });
    const sweptMs = since(cutAt);
    expect(cut.health().ok).toBe(false);

    // When the link is back, the node puts alice online again by itself.
    proxy.heal();
    const healedAt = Date.now();
    await eventually(() => expect(recorder.presence()).toHaveLength(3), 10_000);
    expect(recorder.presence()[2]).toMatchObject({ userId: "alice", status: "online" });
    const reassertedMs = since(healedAt);
    expect(await observer.presence.onlineUsers()).toEqual(["alice"]);
    await eventually(() => expect(cut.health()).toEqual({ ok: true }));
    console.log(
      `[partition] node swept by the others ${sweptMs} ms after losing Redis (ttl ${timings.nodeTtlMs} ms); ` +
        `its users re-asserted ${reassertedMs} ms after the link came back`,
    );
  }, 30_000);

  it("does not hang on a silent partition: the watchdog turns it into an outage", async () => {
    const server = await startRedisServer();
    const proxy = await startProxy(server.port);
    proxies.push(proxy);
    const engine = await startEngine({ url: proxy.url, keyPrefix: "silent:" });
    proxy.blackhole(); // Connections stay open; nothing gets through, nothing is refused.

    const attempted = Date.now();
    const append = engine.messages.append({
      id: randomUUID(),
      from: "alice",
      to: "bob",
      content: "into the void",
      timestamp: new Date().toISOString(),
      senderConnId: "c",
    });
    await expect(append).rejects.toBeInstanceOf(EngineUnavailableError);
    const failMs = since(attempted);
    expect(failMs).toBeLessThan(7000);
    expect(engine.health().ok).toBe(false);

    proxy.heal();
    const healedAt = Date.now();
    await eventually(() => expect(engine.health()).toEqual({ ok: true }), 20_000, 10);
    console.log(
      `[silent partition] append rejected after ${failMs} ms (liveness timeout 5 s); ` +
        `healthy ${since(healedAt)} ms after the link came back`,
    );
  }, 40_000);
  it("with waitForRedis, starts without Redis, fails fast, and starts for real once Redis answers", async () => {
    const port = await freePort();
    const url = `redis://127.0.0.1:${port}`;
    const warnings: (string | undefined)[] = [];
    const engine = await startEngine({
      url,
      keyPrefix: "late-start:",
      waitForRedis: true,
      logger: { info() {}, warn: (_obj, msg) => warnings.push(msg), error() {} },
    });
    expect(engine.health()).toEqual({ ok: false, reason: "redis unreachable since start" });
    expect(warnings).toContain(
      "redis cannot be reached at start; serving as during an outage until it answers",
    );
    await expect(engine.presence.onlineUsers()).rejects.toBeInstanceOf(EngineUnavailableError);
    await expect(engine.broker.subscribe("bob")).rejects.toBeInstanceOf(EngineUnavailableError);

    const started = Date.now();
    await startRedisServer(port);
    await eventually(() => expect(engine.health()).toEqual({ ok: true }), 5000);
    console.log(`[measure] started ${since(started)} ms after Redis came up`);
    await goOnline(engine, "bob");
    expect(await engine.presence.onlineUsers()).toEqual(["bob"]);
  });

  it("with waitForRedis, closes cleanly while still waiting for Redis", async () => {
    const engine = await startEngine({
      url: `redis://127.0.0.1:${await freePort()}`,
      keyPrefix: "never:",
      waitForRedis: true,
    });
    await engine.close();
    expect(engine.health()).toEqual({ ok: false, reason: "engine closed" });
  });

  it("without waitForRedis, rejects when Redis cannot be reached", async () => {
    await expect(
      startEngine({ url: `redis://127.0.0.1:${await freePort()}`, keyPrefix: "never:" }),
    ).rejects.toThrow(/cannot reach Redis at redis:\/\/127\.0\.0\.1:\d+/);
  });
});
