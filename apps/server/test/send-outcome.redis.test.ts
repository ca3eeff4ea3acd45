/**
 * When a send fails, the client learns what is known of its fate: "not stored" (resend later) or
 * "unknown" (it may be stored: resend with the same clientMsgId). Before this, every UNAVAILABLE
 * said "nothing was sent", also for a message Redis had stored before its reply was lost.
 *
 * A TCP proxy between the node and Redis plays the faults: it can cut the connection that
 * carries a given message right after Redis answered it (Redis ran the script, the node never
 * hears back), or refuse connections altogether (nothing can be written).
 */
import { randomUUID } from "node:crypto";
import { createConnection, createServer, type Server, type Socket } from "node:net";
import { eventually, redisForTests } from "@mrezhen/testkit";
import { afterAll, describe, expect, it, onTestFinished } from "vitest";
import { startNode } from "./helpers.js";

const redis = await redisForTests();
afterAll(() => redis?.close());

/** A proxy to Redis that can lose the reply to a command containing a marker. */
class FaultyProxy {
  private server: Server | undefined;
  private readonly pairs = new Set<[Socket, Socket]>();
  /** When set: the connection that sends a command containing this text dies at its reply. */
  dropReplyTo: string | undefined;
  port = 0;

  constructor(private readonly target: { host: string; port: number }) {}

  async start(): Promise<void> {
    const server = createServer((client) => {
      const upstream = createConnection(this.target);
      const pair: [Socket, Socket] = [client, upstream];
      this.pairs.add(pair);
      let doomed = false;
      client.on("data", (chunk) => {
        if (this.dropReplyTo !== undefined && chunk.includes(this.dropReplyTo)) {
          doomed = true;
          this.dropReplyTo = undefined;
        }
        upstream.write(chunk);
      });
      upstream.on("data", (chunk) => {
        // Redis has run the command and answered: the answer is lost with the connection.
        if (doomed) this.cut(pair);
        else client.write(chunk);
      });
      const end = () => this.cut(pair);
      client.on("error", end).on("close", end);
      upstream.on("error", end).on("close", end);
    });
    await new Promise<void>((resolve) => server.listen(this.port, "127.0.0.1", resolve));
    this.port = (server.address() as { port: number }).port;
    this.server = server;
  }

  /** Closes the listener and every connection: nothing reaches Redis until start() again. */
  async stop(): Promise<void> {
    for (const pair of this.pairs) this.cut(pair);
    await new Promise<void>((resolve) =>
      this.server ? this.server.close(() => resolve()) : resolve(),
    );
    this.server = undefined;
  }

  private cut(pair: [Socket, Socket]): void {
    this.pairs.delete(pair);
    pair[0].destroy();
    pair[1].destroy();
  }
}

describe.skipIf(!redis)("the outcome of a failed send", () => {
  async function setup() {
    const url = new URL(redis?.url ?? "");
    const proxy = new FaultyProxy({ host: url.hostname, port: Number(url.port || 6379) });
    await proxy.start();
    onTestFinished(() => proxy.stop());
    const node = await startNode({
      REDIS_URL: `redis://127.0.0.1:${proxy.port}`,
      REDIS_KEY_PREFIX: `${redis?.prefix ?? ""}${randomUUID().slice(0, 6)}:`,
    });
    const alice = await node.connect("alice");
    const bob = await node.connect("bob");
    return { proxy, node, alice, bob };
  }

  it("says 'unknown' when Redis stored the message and the reply was lost; the retry with the same clientMsgId gets the original ack", async () => {
    const { proxy, node, alice, bob } = await setup();
    const marker = `stored-but-unanswered-${randomUUID()}`;
    proxy.dropReplyTo = marker;
    alice.send({ type: "direct_message", to: "bob", content: marker, clientMsgId: "k-1" });
    const error = await alice.next("error", 5000);
    expect(error).toMatchObject({ code: "UNAVAILABLE", outcome: "unknown", clientMsgId: "k-1" });
    expect(error["message"]).toMatch(/may or may not have been stored.*same clientMsgId/);
    // It was stored: bob got it live, as Redis published it.
    const live = await bob.next("direct_message", 5000);
    expect((live["message"] as { content: string }).content).toBe(marker);

    // The node reconnects by itself; the retry is answered from the idempotency record.
    await eventually(async () => expect((await fetch(`${node.url}/ready`)).status).toBe(200));
    alice.send({ type: "direct_message", to: "bob", content: marker, clientMsgId: "k-1" });
    const ack = await alice.next("message_ack", 5000);
    expect(ack["messageId"]).toBe((live["message"] as { id: string }).id);
    alice.send({ type: "get_history", with: "bob" });
    const history = await alice.next("message_history");
    expect((history["messages"] as unknown[]).length).toBe(1);
    await bob.expectNone("direct_message", 300);
  });

  it("says 'not_stored' when the message could not be written at all, and it is not stored", async () => {
    const { proxy, node, alice } = await setup();
    await proxy.stop();
    await eventually(async () => expect((await fetch(`${node.url}/ready`)).status).toBe(503));
    alice.send({ type: "direct_message", to: "bob", content: "never written", clientMsgId: "k-2" });
    const error = await alice.next("error", 5000);
    expect(error).toMatchObject({ code: "UNAVAILABLE", outcome: "not_stored", clientMsgId: "k-2" });
    expect(error["message"]).toMatch(/was not stored/);

    await proxy.start();
    await eventually(
      async () => expect((await fetch(`${node.url}/ready`)).status).toBe(200),
      10_000,
    );
    alice.send({ type: "get_history", with: "bob" });
    expect((await alice.next("message_history"))["messages"]).toEqual([]);
  });
});
