/**
 * The hot path's cost: a direct message is MessageStore.appendIfAllowed (the rate-limit window
 * and the store in one script), and that must be one Redis round trip, one EVALSHA. Counted with
 * MONITOR (testkit's commandsOf, only this engine's command connection), on a redis-server of
 * its own: MONITOR on the Redis that every other test file loads streams their commands too.
 */
import { randomUUID } from "node:crypto";
import { Recorder } from "@mrezhen/engine/contract";
import { encodeMessage } from "@mrezhen/protocol";
import { commandsOf, deletePrefix, eventually, ownRedisServer } from "@mrezhen/testkit";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { closeEngines, goOnline, startEngine } from "./helpers.js";

const redis = await ownRedisServer();
afterAll(() => redis?.stop());

describe.skipIf(!redis)("redis engine: round trips per direct message", () => {
  const url = redis?.url ?? "";
  const keyPrefix = `round-trips:${randomUUID().slice(0, 8)}:`;
  afterEach(async () => {
    await closeEngines();
    await deletePrefix(url, keyPrefix);
  });

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
    const delivered = await commandsOf(url, nodeId, async () => {
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

    const queued = await commandsOf(url, nodeId, async () => {
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
    const idempotent = await commandsOf(url, nodeId, async () => {
      original = await engine.messages.appendIfAllowed(withKey);
      expect(original).toMatchObject({ status: "delivered", duplicate: false });
    });
    expect(idempotent.map((args) => args[0]?.toLowerCase())).toEqual(["evalsha"]);
    console.log(`[round trips] DM with clientMsgId: ${idempotent.length} commands`);
    const retried = await commandsOf(url, nodeId, async () => {
      const retry = await engine.messages.appendIfAllowed({ ...withKey, id: randomUUID() });
      expect(retry).toEqual({ ...original, duplicate: true });
    });
    expect(retried.map((args) => args[0]?.toLowerCase())).toEqual(["evalsha"]);
    console.log(`[round trips] its retry (duplicate): ${retried.length} commands`);
  });
});
