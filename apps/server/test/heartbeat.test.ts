import { mintToken, TestClient } from "@mrezhen/testkit";
import { describe, expect, it, onTestFinished } from "vitest";
import { startNode } from "./helpers.js";

describe("heartbeat", () => {
  it("terminates a connection that stops answering pings, and shows its user offline", async () => {
    const { connect, wsUrl } = await startNode({ HEARTBEAT_INTERVAL_MS: "100" });
    const bob = await connect("bob");
    const silent = await TestClient.connect(`${wsUrl}?token=${await mintToken({ sub: "alice" })}`, {
      autoPong: false,
    });
    onTestFinished(() => void silent.close());
    expect(await bob.next("presence")).toMatchObject({ userId: "bob", status: "online" });
    expect(await bob.next("presence")).toMatchObject({ userId: "alice", status: "online" });

    const closed = await silent.closed;
    expect(closed.code).toBe(1006); // terminated: no close handshake with a dead peer
    expect(await bob.next("presence")).toMatchObject({
      userId: "alice",
      status: "offline",
      onlineUsers: ["bob"],
    });
  });

  it("spreads the pings over the interval instead of pinging everyone at once", async () => {
    const intervalMs = 2000;
    const { connect } = await startNode({ HEARTBEAT_INTERVAL_MS: String(intervalMs) });
    const clients = await Promise.all(Array.from({ length: 16 }, (_, i) => connect(`user-${i}`)));
    const startedAt = performance.now();
    const pingTimes = clients.map(() => [] as number[]);
    for (const [i, client] of clients.entries())
      client.socket.on("ping", () => pingTimes[i]?.push(performance.now() - startedAt));
    await new Promise((resolve) => setTimeout(resolve, 2.5 * intervalMs));

    const firsts = pingTimes.map((times) => times[0] ?? Number.NaN);
    expect(firsts.every((t) => t <= intervalMs + 500)).toBe(true);
    // All at once, the first pings would land within a few milliseconds of each other.
    expect(Math.max(...firsts) - Math.min(...firsts)).toBeGreaterThan(intervalMs / 2);
    // Each connection is still pinged once per interval.
    for (const [first, second] of pingTimes) {
      expect((second as number) - (first as number)).toBeGreaterThan(intervalMs * 0.75);
      expect((second as number) - (first as number)).toBeLessThan(intervalMs * 1.25);
    }
  });

  it("gives a lone connection the whole interval to answer, not a tick", async () => {
    const intervalMs = 2000;
    const { wsUrl } = await startNode({ HEARTBEAT_INTERVAL_MS: String(intervalMs) });
    const slow = await TestClient.connect(`${wsUrl}?token=${await mintToken({ sub: "alice" })}`, {
      autoPong: false,
    });
    onTestFinished(() => void slow.close());
    let pings = 0;
    slow.socket.on("ping", (data) => {
      pings++;
      // A loaded client: the pong comes back well after a heartbeat tick, within the interval.
      setTimeout(() => slow.socket.pong(data), 600);
    });
    await new Promise((resolve) => setTimeout(resolve, 2.6 * intervalMs));
    expect(pings).toBe(3); // at 0, 1 and 2 intervals: once per interval
    slow.send({ type: "ping" });
    await slow.next("pong");
  });

  it("keeps a connection that answers pings", async () => {
    const { connect } = await startNode({ HEARTBEAT_INTERVAL_MS: "100" });
    const alice = await connect("alice");
    await new Promise((resolve) => setTimeout(resolve, 500));
    alice.send({ type: "ping" });
    await alice.next("pong");
  });
});
