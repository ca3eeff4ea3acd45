import { eventually, mintToken, TestClient } from "@mrezhen/testkit";
import { describe, expect, it, onTestFinished } from "vitest";
import { capturedLog, startNode } from "./helpers.js";

/** Keeps the event loop busy for `ms`: nothing else runs, as in a storm or a long GC. */
function busy(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // Busy.
  }
}

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

  it("does not terminate a peer whose pong waits unread because the node itself was behind", async () => {
    // One tick per interval: every tick judges every connection.
    const { wsUrl } = await startNode({ HEARTBEAT_INTERVAL_MS: "300" });
    const alice = await TestClient.connect(`${wsUrl}?token=${await mintToken({ sub: "alice" })}`);
    onTestFinished(() => void alice.close());
    let stalled = false;
    alice.socket.on("ping", () => {
      // The pong is already written (ws answers before this listener); the process then stalls
      // past the interval, so the node's next tick runs before it has read that pong. Before,
      // the tick found no pong and terminated a live peer.
      if (stalled) return;
      stalled = true;
      busy(1000);
    });
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect(stalled).toBe(true);
    alice.send({ type: "ping" });
    await alice.next("pong");
    expect(alice.socket.readyState).toBe(alice.socket.OPEN);
  });

  it("gives a connection the whole interval even when a pass reaches it early", async () => {
    // 1,200 ms, 4 ticks: connections opened during a pass are pinged at its last tick. When many
    // of those before them close, the next pass reaches them a tick or two later, not an
    // interval later: before, a pong delayed more than that by a busy client cost the connection.
    const intervalMs = 1200;
    const { connect, wsUrl } = await startNode({ HEARTBEAT_INTERVAL_MS: String(intervalMs) });
    const early = await Promise.all(Array.from({ length: 60 }, (_, i) => connect(`early-${i}`)));
    const slow = await TestClient.connect(`${wsUrl}?token=${await mintToken({ sub: "slow" })}`, {
      autoPong: false,
    });
    onTestFinished(() => void slow.close());
    let pings = 0;
    slow.socket.on("ping", (data) => {
      pings++;
      // A loaded client: every pong comes 800 ms late, well within the interval.
      setTimeout(() => slow.socket.pong(data), 800);
      // Those ahead of it in the pass leave right after its first ping.
      if (pings === 1) for (const client of early) void client.close();
    });
    await new Promise((resolve) => setTimeout(resolve, 3.5 * intervalMs));
    expect(pings).toBeGreaterThanOrEqual(2);
    slow.send({ type: "ping" });
    await slow.next("pong");
  });

  it("keeps a client that missed one ping (saturated for a whole interval) and then answers", async () => {
    const { wsUrl } = await startNode({ HEARTBEAT_INTERVAL_MS: "300" });
    const late = await TestClient.connect(`${wsUrl}?token=${await mintToken({ sub: "late" })}`, {
      autoPong: false,
    });
    onTestFinished(() => void late.close());
    let pings = 0;
    late.socket.on("ping", (data) => {
      pings++;
      // The first pong comes more than an interval late, the others at once.
      setTimeout(() => late.socket.pong(data), pings === 1 ? 450 : 0);
    });
    await new Promise((resolve) => setTimeout(resolve, 1500));
    expect(pings).toBeGreaterThanOrEqual(3);
    late.send({ type: "ping" });
    await late.next("pong");
  });

  it("logs the connections it terminates as one warning with a count, not a line each", async () => {
    const { logger, lines } = capturedLog("warn");
    const { wsUrl } = await startNode({ HEARTBEAT_INTERVAL_MS: "100" }, { logger });
    const silent = await Promise.all(
      Array.from({ length: 20 }, async (_, i) =>
        TestClient.connect(`${wsUrl}?token=${await mintToken({ sub: `silent-${i}` })}`, {
          autoPong: false,
        }),
      ),
    );
    for (const client of silent) onTestFinished(() => void client.close());
    await Promise.all(silent.map((client) => client.closed));
    const heartbeat = () => lines.filter((line) => String(line["msg"]).startsWith("heartbeat"));
    await eventually(() => {
      const counted = heartbeat().reduce((sum, line) => sum + Number(line["count"]), 0);
      expect(counted).toBe(20);
    }, 3000);
    expect(heartbeat().length).toBeLessThanOrEqual(2);
    expect(heartbeat()[0]).toMatchObject({ level: 40 });
  });

  it("keeps a connection that answers pings", async () => {
    const { connect } = await startNode({ HEARTBEAT_INTERVAL_MS: "100" });
    const alice = await connect("alice");
    await new Promise((resolve) => setTimeout(resolve, 500));
    alice.send({ type: "ping" });
    await alice.next("pong");
  });
});
