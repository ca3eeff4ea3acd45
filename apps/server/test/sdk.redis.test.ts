import { type ChatMessage, MrezhenClient, type WebSocketConstructor } from "@mrezhen/client";
import { eventually, mintToken, redisForTests } from "@mrezhen/testkit";
import { afterAll, describe, expect, it } from "vitest";
import WebSocket from "ws";
import { type NodeProcess, spawnNode } from "./helpers.js";

/**
 * @mrezhen/client against real nodes (child processes) sharing a real Redis: what the server
 * promises (an acked message is never lost, a retry is never stored twice, a device that was
 * away gets what it missed, in order) must reach the app's `message` events through the SDK.
 */
const redis = await redisForTests();

afterAll(async () => {
  await redis?.close();
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function sdk(userId: string, url: () => string): MrezhenClient {
  return new MrezhenClient({
    url,
    getToken: () => mintToken({ sub: userId }),
    // Node 20 has no global WebSocket; ws's has the same shape.
    WebSocket: WebSocket as unknown as WebSocketConstructor,
    presence: "off",
  });
}

describe.skipIf(!redis)("the SDK on a Redis cluster", () => {
  it("1,000 messages while the sender's node is killed (-9) and the receiver's restarted: none lost, none twice, in order", async () => {
    if (!redis) throw new Error("no redis");
    const env = {
      REDIS_URL: redis.url,
      REDIS_KEY_PREFIX: redis.prefix,
      RATE_LIMIT_MESSAGES: "1000000",
      SHUTDOWN_TIMEOUT_MS: "3000",
    };
    const a = await spawnNode(env);
    const b = await spawnNode(env);
    // Each client prefers its own node while it lives, like a load balancer's pick.
    let senderNode: NodeProcess = a;
    let receiverNode: NodeProcess = b;
    const sender = sdk("sdk-sender", () => senderNode.wsUrl);
    const receiver = sdk("sdk-receiver", () => receiverNode.wsUrl);
    const received: ChatMessage[] = [];
    receiver.on("message", (message) => received.push(message));
    const closes: number[] = [];
    sender.on("close", ({ code }) => closes.push(code));
    receiver.on("close", ({ code }) => closes.push(code));
    try {
      await receiver.connect();
      await sender.connect();
      await eventually(() => expect(receiver.state).toBe("open"));

      const total = 1000;
      let acked = 0;
      const sends: Promise<unknown>[] = [];
      for (let i = 0; i < total; i++) {
        sends.push(
          sender
            .sendMessage({ to: "sdk-receiver", content: `m${String(i).padStart(4, "0")}` })
            .then(() => {
              acked++;
            }),
        );
        if (i % 10 === 9) await sleep(5);
        if (i === 300) {
          // The sender's node dies without a word: its socket drops, unacked sends stay queued.
          a.child.kill("SIGKILL");
          senderNode = b;
        }
        if (i === 600) {
          // The receiver's node restarts: a new node comes up, the old one drains (1012).
          const c = await spawnNode(env);
          receiverNode = c;
          senderNode = c;
          b.child.kill("SIGTERM");
        }
      }
      await Promise.all(sends);
      expect(acked).toBe(total);
      await eventually(() => expect(received.length).toBeGreaterThanOrEqual(total), 30_000);
      await sleep(300);

      const contents = received.map((message) => message.content);
      const expected = Array.from({ length: total }, (_, i) => `m${String(i).padStart(4, "0")}`);
      expect(new Set(received.map((message) => message.id)).size).toBe(received.length);
      expect(contents).toEqual(expected);
      expect(sender.pending()).toEqual([]);
      // Both outages happened while the clients were connected.
      expect(closes).toContain(1006);
      expect(closes).toContain(1012);
      console.log(
        `SDK cluster run: ${total} sent, ${received.length} received, closes ${closes.join(",")}`,
      );
    } finally {
      sender.close();
      receiver.close();
    }
  }, 120_000);
});
