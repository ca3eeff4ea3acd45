import type { Socket } from "node:net";
import type { TestClient } from "@mrezhen/testkit";
import { describe, expect, it } from "vitest";
import { MAX_PONGS_WAITING } from "../src/http/ws-transport.js";
import { startNode } from "./helpers.js";

/**
 * Runs `write` with the client's TCP socket corked, so that everything it sends leaves in one
 * write and reaches the node in one read: the case where ws's own limit closed a client that
 * reads (its 61st pong in one read was still unwritten).
 */
function inOneWrite(client: TestClient, write: () => void): void {
  // ws keeps its TCP socket private; the test needs it only to batch the writes.
  const tcp = (client.socket as unknown as { _socket: Socket })._socket;
  tcp.cork();
  write();
  tcp.uncork();
}

/** Collects the payloads of the pongs the client gets, in order. */
function pongPayloads(client: TestClient): string[] {
  const payloads: string[] = [];
  client.socket.on("pong", (payload) => payloads.push(payload.toString()));
  return payloads;
}

/** Whether the connection still answers: an app-level ping gets its pong. */
async function stillServes(client: TestClient): Promise<void> {
  client.send({ type: "ping" });
  await client.next("pong");
}

describe("WebSocket pings from a client that reads", () => {
  it(`answers every ping of a burst of ${MAX_PONGS_WAITING} in one read, in order, and stays open`, async () => {
    const { connect } = await startNode();
    const client = await connect("alice");
    const payloads = pongPayloads(client);
    inOneWrite(client, () => {
      for (let i = 0; i < MAX_PONGS_WAITING; i++) client.socket.ping(`p${i}`);
    });
    await stillServes(client);
    await expect.poll(() => payloads.length).toBe(MAX_PONGS_WAITING);
    expect(payloads).toEqual(Array.from({ length: MAX_PONGS_WAITING }, (_, i) => `p${i}`));
  });

  it("coalesces a larger burst: the latest ping is always answered, and the connection stays open", async () => {
    const { connect } = await startNode();
    const client = await connect("alice");
    const payloads = pongPayloads(client);
    const burst = 5000;
    inOneWrite(client, () => {
      for (let i = 0; i < burst; i++) client.socket.ping(`p${i}`);
    });
    await expect.poll(() => payloads.at(-1), { timeout: 5000 }).toBe(`p${burst - 1}`);
    await stillServes(client);
    expect(payloads.length).toBeGreaterThan(MAX_PONGS_WAITING);
    expect(payloads.length).toBeLessThanOrEqual(burst);
    // Pongs answer pings in the order they were sent, each at most once.
    const order = payloads.map((payload) => Number(payload.slice(1)));
    expect(order).toEqual([...order].sort((a, b) => a - b));
    expect(new Set(order).size).toBe(order.length);
  });

  it("answers a burst of 1000 app-level pings with 1000 pongs (they are ordinary frames)", async () => {
    const { connect } = await startNode();
    const client = await connect("alice");
    inOneWrite(client, () => {
      for (let i = 0; i < 1000; i++) client.send({ type: "ping" });
    });
    for (let i = 0; i < 1000; i++) await client.next("pong");
    await stillServes(client);
  });
});

describe("binary frames", () => {
  it("closes a connection that sends a binary frame with 1003 and a reason, and serves everyone else", async () => {
    const { connect } = await startNode();
    const bob = await connect("bob");
    const alice = await connect("alice");
    // Valid JSON, even: the frame type is what is refused, not its bytes.
    alice.socket.send(Buffer.from(JSON.stringify({ type: "ping" })), { binary: true });
    const closed = await alice.closed;
    expect(closed).toEqual({
      code: 1003,
      reason: "binary frames are not supported: send JSON in text frames",
    });
    expect(alice.received.filter((frame) => frame.type === "pong")).toHaveLength(1); // connect's
    await stillServes(bob);
  });
});
