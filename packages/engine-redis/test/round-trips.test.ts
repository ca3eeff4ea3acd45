/**
 * The hot path's cost: a direct message is MessageStore.appendIfAllowed (the rate-limit window
 * and the store in one script), and that must be one Redis round trip, one EVALSHA. Counted with
 * MONITOR on a separate connection, keeping only the commands sent by this engine's command
 * connection (found by its name in CLIENT LIST). On a redis-server of its own: MONITOR on the
 * Redis that every other test file loads at the same time streams all of their commands too, and
 * ioredis' monitor mode loses track of its replies under that flood ("Command queue state error").
 */
import { randomUUID } from "node:crypto";
import { Recorder } from "@mrezhen/engine/contract";
import { encodeMessage } from "@mrezhen/protocol";
import { deletePrefix, eventually, ownRedisServer } from "@mrezhen/testkit";
import type { Redis } from "ioredis";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { closeEngines, goOnline, rawClient, startEngine } from "./helpers.js";

const redis = await ownRedisServer();
afterAll(() => redis?.stop());

describe.skipIf(!redis)("redis engine: round trips per direct message", () => {
  const url = redis?.url ?? "";
  const keyPrefix = `round-trips:${randomUUID().slice(0, 8)}:`;
  const clients: Redis[] = [];
  afterEach(async () => {
    await closeEngines();
    for (const client of clients.splice(0)) client.disconnect();
    await deletePrefix(url, keyPrefix);
  });

  /** Records every command `nodeId`'s command connection sends while `action` runs. */
  async function commandsOf(nodeId: string, action: () => Promise<void>): Promise<string[][]> {
    const admin = rawClient(url);
    clients.push(admin);
    const list = String(await admin.client("LIST"));
    const line = list.split("\n").find((l) => l.includes(` name=mrezhen:${nodeId}:command `));
    const address = /\baddr=(\S+)/.exec(line ?? "")?.[1];
    if (address === undefined) throw new Error(`no command connection for ${nodeId}:\n${list}`);

    const monitor = await admin.monitor(); // A connection of its own (ioredis duplicates).
    monitor.on("error", () => {});
    clients.push(monitor);
    const seen: string[][] = [];
    monitor.on("monitor", (_time: string, args: string[], source: string) => {
      if (source === address) seen.push(args);
    });
    // MONITOR is active once it reports a command of ours (a PING from the admin connection).
    const marker = `marker-${randomUUID()}`;
    let markerSeen = false;
    monitor.on("monitor", (_time: string, args: string[]) => {
      if (args[1] === marker) markerSeen = true;
    });
    await eventually(async () => {
      await admin.ping(marker);
      if (!markerSeen) throw new Error("MONITOR not active yet");
    }, 3000);

    await action();
    await new Promise((resolve) => setTimeout(resolve, 100)); // Let MONITOR catch up.
    return seen;
  }

  it("costs one EVALSHA per direct message, rate limit included, delivered or queued", async () => {
    // A long heartbeat keeps the liveness script out of the count.
    const options = { url, keyPrefix, heartbeatIntervalMs: 60_000, nodeTtlMs: 180_000 };
    const nodeId = `rt-${randomUUID().slice(0, 8)}`;
    const engine = await startEngine({ ...options, nodeId });
    const recorder = new Recorder();
    engine.broker.setHandler(recorder);
    await goOnline(engine, "bob");
    // alice has two connections: append also publishes the sender copy (the busiest case).
    await goOnline(engine, "alice");
    await engine.presence.connect("alice");

    const id = randomUUID();
    const timestamp = new Date().toISOString();
    let elapsed = 0;
    const delivered = await commandsOf(nodeId, async () => {
      const started = performance.now();
      const result = await engine.messages.appendIfAllowed({
        id,
        from: "alice",
        to: "bob",
        content: 'hi "bob" </script> ✓',
        timestamp,
        senderConnId: "alice-laptop",
      });
      elapsed = performance.now() - started;
      expect(result).toMatchObject({ status: "delivered" });
    });
    expect(delivered.map((args) => args[0]?.toLowerCase())).toEqual(["evalsha"]);
    console.log(
      `[round trips] delivered DM with sender copy: ${delivered.length} commands ` +
        `(${delivered.map((a) => a[0]).join(", ")}); appendIfAllowed took ${elapsed.toFixed(1)} ms (with MONITOR on)`,
    );

    // Both events went out from inside the script, byte-identical to protocol encodeMessage.
    const expected = encodeMessage({
      id,
      from: "alice",
      to: "bob",
      content: 'hi "bob" </script> ✓',
      timestamp,
      seq: 1,
    });
    await eventually(() => {
      expect(recorder.eventsFor("bob").map((e) => e.messageJson)).toEqual([expected]);
      expect(recorder.eventsFor("alice")).toMatchObject([
        { messageJson: expected, excludeConnId: "alice-laptop" },
      ]);
    });

    const queued = await commandsOf(nodeId, async () => {
      const result = await engine.messages.appendIfAllowed({
        id: randomUUID(),
        from: "alice",
        to: "carol",
        content: "offline",
        timestamp,
        senderConnId: "alice-laptop",
      });
      expect(result).toMatchObject({ status: "queued" });
    });
    expect(queued.map((args) => args[0]?.toLowerCase())).toEqual(["evalsha"]);
    console.log(`[round trips] queued DM: ${queued.length} commands`);

    // With a clientMsgId (B2): the idempotency check and record are inside the same script, and
    // a retry answered from the record costs the same.
    const withKey = {
      id: randomUUID(),
      from: "alice",
      to: "bob",
      content: "idempotent",
      timestamp,
      senderConnId: "alice-laptop",
      clientMsgId: "client-key-1",
    };
    let original: Awaited<ReturnType<typeof engine.messages.appendIfAllowed>> | undefined;
    const idempotent = await commandsOf(nodeId, async () => {
      original = await engine.messages.appendIfAllowed(withKey);
      expect(original).toMatchObject({ status: "delivered", duplicate: false });
    });
    expect(idempotent.map((args) => args[0]?.toLowerCase())).toEqual(["evalsha"]);
    console.log(`[round trips] DM with clientMsgId: ${idempotent.length} commands`);
    const retried = await commandsOf(nodeId, async () => {
      const retry = await engine.messages.appendIfAllowed({ ...withKey, id: randomUUID() });
      expect(retry).toEqual({ ...original, duplicate: true });
    });
    expect(retried.map((args) => args[0]?.toLowerCase())).toEqual(["evalsha"]);
    console.log(`[round trips] its retry (duplicate): ${retried.length} commands`);
  });
});
