/**
 * What a connect costs Redis, the node's largest cost per connection in a reconnect storm after
 * the upgrade itself (issues 10 and 18): a `presence=contacts` connection of a user with no
 * conversation, no group and nothing queued is its SUBSCRIBE, then its registration (a presence
 * batch) and its two reads, contacts and groups, in one write. The empty offline queue is not
 * read: the presence batch found it empty in the step that registered the connection. A user
 * with something queued still gets it.
 *
 * On a redis-server of its own: MONITOR (filtered to the node's command connection) and INFO's
 * total_reads_processed (one per read of a client's socket) see only this test's commands.
 */
import { randomUUID } from "node:crypto";
import { createRedisEngine } from "@mrezhen/engine-redis";
import { loadConfig } from "@mrezhen/server";
import { commandsOf, ownRedisServer } from "@mrezhen/testkit";
import { Redis } from "ioredis";
import { afterAll, describe, expect, it, onTestFinished } from "vitest";
import { startNode, type TestNode } from "./helpers.js";

const redis = await ownRedisServer();
afterAll(() => redis?.stop());

const CONTACTS = "&presence=contacts";

describe.skipIf(!redis)("a connect's commands to Redis", () => {
  const url = redis?.url ?? "";

  async function admin(): Promise<Redis> {
    const client = new Redis(url, { lazyConnect: true });
    await client.connect();
    onTestFinished(() => client.disconnect());
    return client;
  }

  /** A node whose engine heartbeat stays out of the counts. */
  async function node(): Promise<{ node: TestNode; nodeId: string; prefix: string }> {
    const nodeId = `cost-${randomUUID().slice(0, 8)}`;
    const prefix = `connect-cost:${randomUUID().slice(0, 8)}:`;
    const engine = await createRedisEngine({
      url,
      keyPrefix: prefix,
      nodeId,
      rateLimit: loadConfig({}).rateLimit,
      heartbeatIntervalMs: 60_000,
      nodeTtlMs: 180_000,
    });
    return { node: await startNode({ NODE_ID: nodeId }, { engine }), nodeId, prefix };
  }

  const naming = (commands: string[][], text: string) =>
    commands.filter((args) => args.some((arg) => arg.includes(text)));

  it("registers and reads contacts and groups, and reads no empty queue", async () => {
    const { node: a, nodeId, prefix } = await node();
    const userId = `carol-${randomUUID().slice(0, 6)}`;
    const commands = await commandsOf(url, nodeId, async () => {
      await a.connect(userId, { query: CONTACTS });
    });
    const mine = naming(commands, userId);
    expect(mine.map((args) => args[0]?.toLowerCase()).sort()).toEqual([
      "evalsha", // the presence batch: `+<user>`
      "hkeys", // groups
      "zrevrange", // contacts
    ]);
    expect(mine.find((args) => args[0]?.toLowerCase() === "evalsha")).toContain(`+${userId}`);
    expect(naming(commands, `${prefix}queue:${userId}`)).toEqual([]);
  });

  it("sends them in one write after the SUBSCRIBE: two reads of Redis per connect", async () => {
    const { node: a } = await node();
    const client = await admin();
    const readsProcessed = async () =>
      Number(/total_reads_processed:(\d+)/.exec(await client.info("stats"))?.[1]);
    const connects = 5;
    const before = await readsProcessed();
    for (let i = 0; i < connects; i++)
      await a.connect(`dave-${i}-${randomUUID().slice(0, 6)}`, { query: CONTACTS });
    // The second INFO is a read too. Before, a connect cost Redis four reads: the SUBSCRIBE, the
    // reads, the presence batch and the queue's read, each in a write of its own.
    const reads = (await readsProcessed()) - before - 1;
    expect(reads).toBe(2 * connects);
  });

  it("still reads a queue that holds a message, and delivers it", async () => {
    const { node: a, nodeId, prefix } = await node();
    const userId = `erin-${randomUUID().slice(0, 6)}`;
    const sender = await a.connect(`frank-${randomUUID().slice(0, 6)}`);
    sender.send({ type: "direct_message", to: userId, content: "while you were away" });
    expect((await sender.next("message_ack"))["status"]).toBe("queued");
    let erin: Awaited<ReturnType<TestNode["connect"]>> | undefined;
    const commands = await commandsOf(url, nodeId, async () => {
      erin = await a.connect(userId, { query: CONTACTS });
    });
    expect(naming(commands, `${prefix}queue:${userId}`).length).toBeGreaterThan(0);
    const received = erin?.received.find((frame) => frame.type === "direct_message");
    expect(received?.["message"]).toMatchObject({ content: "while you were away" });
  });
});
