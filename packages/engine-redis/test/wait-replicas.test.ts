/**
 * REDIS_WAIT_REPLICAS on one standalone Redis with a replica (both started here): a DM is acked
 * only once the replica has it, and refused (not acked: the client retries) while no replica
 * answers. The cluster side of it is in cluster.test.ts (kill -9 of a master).
 */
import { randomUUID } from "node:crypto";
import { EngineUnavailableError } from "@mrezhen/engine";
import { eventually } from "@mrezhen/testkit";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import {
  closeEngines,
  haveRedisServer,
  killRedisServers,
  rawClient,
  startEngine,
  startRedisServer,
} from "./helpers.js";

afterEach(closeEngines);
afterAll(killRedisServers);

describe.skipIf(!haveRedisServer())("REDIS_WAIT_REPLICAS on a standalone Redis", () => {
  it("acks a DM once a replica has it, and refuses it while no replica answers", async () => {
    const primary = await startRedisServer();
    const replica = await startRedisServer();
    const replicaClient = rawClient(replica.url);
    await replicaClient.replicaof("127.0.0.1", primary.port);
    await eventually(async () => {
      expect(await replicaClient.info("replication")).toContain("master_link_status:up");
    }, 10_000);

    const keyPrefix = `wait:${randomUUID().slice(0, 8)}:`;
    const engine = await startEngine({ url: primary.url, keyPrefix, waitReplicas: 1 });
    const send = (clientMsgId: string) =>
      engine.messages.appendIfAllowed({
        id: randomUUID(),
        from: "alice",
        to: "bob",
        content: "kept by two servers",
        timestamp: new Date().toISOString(),
        senderConnId: "alice-1",
        clientMsgId,
      });
    const acked = await send("w1");
    expect(acked).toMatchObject({ seq: 1, status: "queued" });
    // The replica has it at the moment of the ack, not later.
    const history = await replicaClient.lrange(`${keyPrefix}conv-log:5:alicebob`, 0, -1);
    expect(history).toHaveLength(1);

    // No replica: WAIT gives up after its timeout and the DM is not acked (the client retries).
    await replica.kill();
    replicaClient.disconnect();
    const started = Date.now();
    const refused = await send("w2").catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(EngineUnavailableError);
    expect((refused as EngineUnavailableError).mayHaveSucceeded).toBe(true);
    console.log(
      `[wait replicas] acked with a replica; without one refused after ${Date.now() - started} ms: ${(refused as Error).message}`,
    );
  }, 30_000);
});
