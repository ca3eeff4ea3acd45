/**
 * Upgrade pacing (UPGRADE_TURN_BUDGET_MS, http/upgrade-pacing.ts): a burst of upgrades is worked
 * through a few milliseconds per turn of the event loop, so the connected users' messages are
 * answered in between instead of after the whole burst. The node runs as its own process (the
 * built server), so that its event loop is not the test's.
 */
import { connect as connectTcp, type Socket } from "node:net";
import { eventually, mintToken } from "@mrezhen/testkit";
import { describe, expect, it } from "vitest";
import { connectTo, spawnNode, upgradeRequest } from "./helpers.js";

const BURST = 400;

/**
 * Writes BURST upgrade requests on connections opened (and accepted) beforehand, then a direct
 * message from a connected user, all while the node is stopped (SIGSTOP), so that it finds all
 * of them readable at once when it goes on, the message last: what it does first no longer
 * depends on how fast this process writes. Returns how many of the burst had their 101 when the
 * message's ack came, once every one of them has it.
 */
async function upgradedWhenAcked(env: Record<string, string>): Promise<number> {
  // The memory engine whatever this run's REDIS_URL: its ack is written in the turn that read
  // the message, so what is measured is the node's own order of work. (On Redis the ack waits
  // for a round trip, during which the paced node goes on with the burst a turn at a time.)
  const node = await spawnNode({ REDIS_URL: "", REDIS_CLUSTER_NODES: "", ...env });
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
  // Accepted by the node before it stops (an accept is not paced; a read is).
  await new Promise((resolve) => setTimeout(resolve, 500));
  let upgraded = 0;
  const refused: string[] = [];
  process.kill(node.child.pid as number, "SIGSTOP");
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
      socket.write(upgradeRequest(tokens[i] as string));
    }
    alice.send({ type: "direct_message", to: "bob", content: "through the storm" });
    await new Promise((resolve) => setTimeout(resolve, 200)); // all of it in the node's sockets
    process.kill(node.child.pid as number, "SIGCONT");
    await alice.next("message_ack");
    const atAck = upgraded;
    await eventually(() => expect(upgraded + refused.length).toBe(BURST), 30_000);
    expect(refused).toEqual([]);
    return atAck;
  } finally {
    process.kill(node.child.pid as number, "SIGCONT");
    for (const socket of sockets) socket.destroy();
  }
}

describe("upgrade pacing (UPGRADE_TURN_BUDGET_MS)", () => {
  it("answers a connected user's message while a burst of upgrades is worked through, and upgrades all of the burst", async () => {
    const atAck = await upgradedWhenAcked({});
    // Paced (the default, 5 ms a turn): the message waits for a turn's upgrades at most.
    expect(atAck).toBeLessThan(BURST / 8);
  }, 60_000);

  it("unpaced (0), the same message waits for most of the burst", async () => {
    const atAck = await upgradedWhenAcked({ UPGRADE_TURN_BUDGET_MS: "0" });
    // Every upgrade read before the message is done first: nearly all of them.
    expect(atAck).toBeGreaterThan(BURST / 2);
  }, 60_000);
});
