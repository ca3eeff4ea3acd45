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

  it("keeps a connection that answers pings", async () => {
    const { connect } = await startNode({ HEARTBEAT_INTERVAL_MS: "100" });
    const alice = await connect("alice");
    await new Promise((resolve) => setTimeout(resolve, 500));
    alice.send({ type: "ping" });
    await alice.next("pong");
  });
});
