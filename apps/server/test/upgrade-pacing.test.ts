/**
 * Upgrade pacing (UPGRADE_TURN_BUDGET_MS, http/upgrade-pacing.ts): a burst of upgrades is worked
 * through a few milliseconds per turn of the event loop, so the connected users' messages are
 * answered in between instead of after the whole burst. The node runs as its own process (the
 * built server), so that its event loop is not the test's.
 */
import { connect as connectTcp, type Socket } from "node:net";
import { eventually, mintToken } from "@mrezhen/testkit";
import { describe, expect, it } from "vitest";
import { connectTo, spawnNode } from "./helpers.js";

const BURST = 400;

/**
 * Writes BURST upgrade requests at once on connections opened beforehand, then sends a direct
 * message from a connected user, and returns how many of the burst had their 101 when the
 * message's ack came, once every one of them has it.
 */
async function upgradedWhenAcked(env: Record<string, string>): Promise<number> {
  const node = await spawnNode(env);
  const alice = await connectTo(node.wsUrl, "alice");
  await connectTo(node.wsUrl, "bob");
  const { port } = new URL(node.url);
  const tokens = await Promise.all(
    Array.from({ length: BURST }, (_, i) => mintToken({ sub: `burst-${i}` })),
  );
  const sockets: Socket[] = await Promise.all(
    tokens.map(
      () =>
        new Promise<Socket>((resolve, reject) => {
          const socket = connectTcp(Number(port), "127.0.0.1", () => resolve(socket));
          socket.once("error", reject);
        }),
    ),
  );
  let upgraded = 0;
  const refused: string[] = [];
  try {
    for (const [i, socket] of sockets.entries()) {
      let head = "";
      socket.on("data", (chunk: Buffer) => {
        if (head.includes("\r\n\r\n")) return;
        head += chunk.toString("latin1");
        if (!head.includes("\r\n\r\n")) return;
        if (head.startsWith("HTTP/1.1 101 ")) upgraded++;
        else refused.push(head.slice(0, head.indexOf("\r\n")));
      });
      socket.write(
        `GET /ws?token=${tokens[i]} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n` +
          "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
          "Sec-WebSocket-Version: 13\r\n\r\n",
      );
    }
    alice.send({ type: "direct_message", to: "bob", content: "through the storm" });
    await alice.next("message_ack");
    const atAck = upgraded;
    await eventually(() => expect(upgraded + refused.length).toBe(BURST), 30_000);
    expect(refused).toEqual([]);
    return atAck;
  } finally {
    for (const socket of sockets) socket.destroy();
  }
}

describe("upgrade pacing (UPGRADE_TURN_BUDGET_MS)", () => {
  it("answers a connected user's message while a burst of upgrades is worked through, and upgrades all of the burst", async () => {
    const atAck = await upgradedWhenAcked({});
    // Paced (the default, 5 ms a turn): the message waits for a few turns' upgrades at most
    // (3 or 4 of the 400 here).
    expect(atAck).toBeLessThan(BURST / 8);
  }, 60_000);

  it("unpaced (0), the same message waits for a large part of the burst", async () => {
    const atAck = await upgradedWhenAcked({ UPGRADE_TURN_BUDGET_MS: "0" });
    // Every upgrade read before the message is done first (184 to 235 of the 400 here).
    expect(atAck).toBeGreaterThan(BURST / 8);
  }, 60_000);
});
