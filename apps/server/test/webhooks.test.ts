/**
 * Webhooks against a real receiving HTTP server: signatures, retries, a node killed with kill -9
 * while it holds events, and a thousand messages with none lost.
 */
import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { eventually, redisForTests } from "@mrezhen/testkit";
import { afterAll, describe, expect, it, onTestFinished } from "vitest";
import { verifyWebhook, webhookKey } from "../src/webhooks/sign.js";
import { spawnNode, startNode, type TestNode } from "./helpers.js";

const redis = await redisForTests();
afterAll(() => redis?.close());

const API_KEY = "webhook-test-api-key-0123";
const SECRET = `whsec_${Buffer.from("a webhook secret for the tests").toString("base64")}`;

interface Delivery {
  readonly id: string;
  readonly timestamp: string;
  readonly signature: string;
  readonly body: string;
  readonly event: { id: string; type: string; data: Record<string, unknown> };
  /** What the receiver answered. */
  readonly status: number;
}

/**
 * A webhook receiver: records every request; `answer` decides each status (default 200).
 */
async function receiver(answer: (delivery: Omit<Delivery, "status">) => number = () => 200) {
  const deliveries: Delivery[] = [];
  const server = createServer((request: IncomingMessage, response: ServerResponse) => {
    let body = "";
    request.on("data", (chunk: Buffer) => {
      body += chunk.toString("utf8");
    });
    request.on("end", () => {
      const partial = {
        id: String(request.headers["webhook-id"]),
        timestamp: String(request.headers["webhook-timestamp"]),
        signature: String(request.headers["webhook-signature"]),
        body,
        event: JSON.parse(body) as Delivery["event"],
      };
      const status = answer(partial);
      deliveries.push({ ...partial, status });
      response.writeHead(status).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  onTestFinished(
    () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  );
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/hook`,
    deliveries,
    /** Delivered (2xx) events of `type`. */
    delivered(type?: string): Delivery[] {
      return deliveries.filter(
        (d) => d.status >= 200 && d.status < 300 && (type === undefined || d.event.type === type),
      );
    },
  };
}

const webhookEnv = (url: string, extra: Record<string, string> = {}) => ({
  API_KEY,
  WEBHOOK_URL: url,
  WEBHOOK_SECRET: SECRET,
  WEBHOOK_RETRY_BASE_MS: "20",
  WEBHOOK_RETRY_MAX_MS: "200",
  WEBHOOK_TIMEOUT_MS: "2000",
  ...extra,
});

async function apiSend(url: string, from: string, to: string, content: string) {
  const response = await fetch(`${url}/api/v1/messages`, {
    method: "POST",
    headers: { authorization: `Bearer ${API_KEY}`, "content-type": "application/json" },
    body: JSON.stringify({ from, to, content }),
  });
  expect(response.status).toBe(200);
  return (await response.json()) as { messageId: string };
}

describe("webhooks (memory engine)", () => {
  it("delivers message.stored and presence events, signed so that the receiver can verify them", async () => {
    const hook = await receiver();
    const node = await startNode(webhookEnv(hook.url));
    const bob = await node.connect("bob");
    const alice = await node.connect("alice");
    alice.send({ type: "direct_message", to: "bob", content: "hello hooks", clientMsgId: "c1" });
    const ack = await alice.next("message_ack");
    await bob.next("direct_message");
    await bob.close();
    await eventually(() => expect(hook.delivered("user.offline")).toHaveLength(1), 5000);
    await eventually(() => expect(hook.delivered("message.stored")).toHaveLength(1), 5000);

    const stored = hook.delivered("message.stored")[0] as Delivery;
    expect(stored.event).toMatchObject({
      id: stored.id,
      type: "message.stored",
      data: {
        messageId: ack["messageId"],
        from: "alice",
        to: "bob",
        content: "hello hooks",
        seq: 1,
        status: "delivered",
        clientMsgId: "c1",
      },
    });
    expect(stored.id).toMatch(/^evt_/);
    expect(stored.signature).toMatch(/^v1,[A-Za-z0-9+/]+=*$/);
    const key = webhookKey(SECRET);
    for (const delivery of hook.deliveries)
      expect(verifyWebhook(key, delivery, delivery.body)).toBe(true);
    // A tampered body, another secret, or an old timestamp (a replay) do not verify.
    expect(verifyWebhook(key, stored, `${stored.body} `)).toBe(false);
    expect(verifyWebhook(webhookKey("whsec_b3RoZXI="), stored, stored.body)).toBe(false);
    expect(verifyWebhook(key, stored, stored.body, 300, Number(stored.timestamp) + 301)).toBe(
      false,
    );

    const presence = hook.delivered().filter((d) => d.event.type.startsWith("user."));
    expect(presence.map((d) => [d.event.type, d.event.data["userId"]])).toEqual([
      ["user.online", "bob"],
      ["user.online", "alice"],
      ["user.offline", "bob"],
    ]);
    const versions = presence.map((d) => d.event.data["version"] as number);
    expect([...versions].sort((a, b) => a - b)).toEqual(versions);
    expect(new Set(hook.deliveries.map((d) => d.id)).size).toBe(hook.deliveries.length);
  });

  it("retries a failing receiver with backoff: the 4th try delivers it, once", async () => {
    let calls = 0;
    const hook = await receiver(() => (++calls <= 3 ? 500 : 200));
    const node = await startNode(webhookEnv(hook.url));
    await apiSend(node.url, "alice", "bob", "retry me");
    await eventually(() => expect(hook.delivered()).toHaveLength(1), 5000);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(hook.deliveries.map((d) => d.status)).toEqual([500, 500, 500, 200]);
    expect(new Set(hook.deliveries.map((d) => d.id)).size).toBe(1);
    const metrics = await (await fetch(`${node.url}/metrics`)).text();
    expect(metrics).toMatch(/^mrezhen_webhook_delivered_total\{[^}]*\} 1$/m);
    expect(metrics).toMatch(/^mrezhen_webhook_failed_total\{[^}]*\} 3$/m);
    expect(metrics).toMatch(/^mrezhen_webhook_retried_total\{[^}]*\} 3$/m);
    expect(metrics).toMatch(/^mrezhen_webhook_queue_depth\{[^}]*\} 0$/m);
    expect(metrics).toMatch(/^mrezhen_webhook_oldest_pending_seconds\{[^}]*\} 0$/m);
  });

  it("drops an event older than WEBHOOK_MAX_AGE, counted", async () => {
    const hook = await receiver(() => 503);
    const node = await startNode(webhookEnv(hook.url, { WEBHOOK_MAX_AGE: "1" }));
    await apiSend(node.url, "alice", "bob", "never delivered");
    await eventually(async () => {
      const metrics = await (await fetch(`${node.url}/metrics`)).text();
      expect(metrics).toMatch(/^mrezhen_webhook_dropped_total\{[^}]*reason="max_age"[^}]*\} 1$/m);
      expect(metrics).toMatch(/^mrezhen_webhook_queue_depth\{[^}]*\} 0$/m);
    }, 5000);
    expect(hook.delivered()).toEqual([]);
  });

  it("queues nothing when WEBHOOK_URL is unset", async () => {
    const node = await startNode({ API_KEY });
    await apiSend(node.url, "alice", "bob", "no hooks");
    expect(await node.node.engine.events.stats()).toEqual({ depth: 0, oldestAgeMs: 0 });
    expect(await (await fetch(`${node.url}/metrics`)).text()).not.toContain("mrezhen_webhook_");
  });
});

describe.skipIf(!redis)("webhooks (Redis engine)", () => {
  const env = (url: string, nodeId: string, prefix: string, extra: Record<string, string> = {}) =>
    webhookEnv(url, {
      REDIS_URL: redis?.url ?? "",
      REDIS_KEY_PREFIX: prefix,
      NODE_ID: nodeId,
      WEBHOOK_CLAIM_IDLE_MS: "600",
      ...extra,
    });
  const freshPrefix = () => `${redis?.prefix ?? ""}${randomUUID().slice(0, 6)}:`;

  it("queues each presence change once, however many nodes hear it", async () => {
    const hook = await receiver();
    const prefix = freshPrefix();
    const a = await startNode(env(hook.url, "p1", prefix));
    await startNode(env(hook.url, "p2", prefix));
    await startNode(env(hook.url, "p3", prefix));
    const carol = await a.connect("carol");
    await carol.close();
    await eventually(() => expect(hook.delivered("user.offline")).toHaveLength(1), 5000);
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(hook.delivered().map((d) => [d.event.type, d.event.data["userId"]])).toEqual([
      ["user.online", "carol"],
      ["user.offline", "carol"],
    ]);
  });

  it("another node delivers the events of a node killed with kill -9 while holding them", async () => {
    let up = false;
    const hook = await receiver(() => (up ? 200 : 503));
    const prefix = freshPrefix();
    const victim = await spawnNode(env(hook.url, "victim", prefix));
    const sent: string[] = [];
    for (let i = 0; i < 5; i++)
      sent.push((await apiSend(victim.url, "alice", `bob${i}`, `held ${i}`)).messageId);
    // The victim has taken every event and is retrying them (its receiver answers 503).
    await eventually(() => {
      const tried = new Set(hook.deliveries.map((d) => d.event.data["messageId"]));
      for (const id of sent) expect(tried.has(id)).toBe(true);
    }, 5000);
    victim.child.kill("SIGKILL");
    await victim.exited;
    up = true;
    await startNode(env(hook.url, "survivor", prefix));
    await eventually(() => {
      const delivered = new Set(
        hook.delivered("message.stored").map((d) => d.event.data["messageId"]),
      );
      for (const id of sent) expect(delivered.has(id)).toBe(true);
    }, 10_000);
    // Every attempt of one message carried one event id.
    const idsPerMessage = new Map<unknown, Set<string>>();
    for (const d of hook.deliveries.filter((d) => d.event.type === "message.stored")) {
      const ids = idsPerMessage.get(d.event.data["messageId"]) ?? new Set();
      ids.add(d.id);
      idsPerMessage.set(d.event.data["messageId"], ids);
    }
    for (const ids of idsPerMessage.values()) expect(ids.size).toBe(1);
  });

  it("1,000 messages over two nodes: 1,000 message.stored events, none lost, repeats only with the same id", async () => {
    // A receiver that fails one request in ten: retries must neither lose nor invent events.
    let requests = 0;
    const hook = await receiver(() => (++requests % 10 === 0 ? 500 : 200));
    const prefix = freshPrefix();
    const nodes: TestNode[] = [
      await startNode(env(hook.url, "n1", prefix)),
      await startNode(env(hook.url, "n2", prefix)),
    ];
    const sent = new Set<string>();
    const total = 1000;
    for (let batch = 0; batch < total; batch += 50) {
      const answers = await Promise.all(
        Array.from({ length: 50 }, (_, i) => {
          const n = batch + i;
          return apiSend((nodes[n % 2] as TestNode).url, `u${n % 7}`, `v${n % 11}`, `m${n}`);
        }),
      );
      for (const answer of answers) sent.add(answer.messageId);
    }
    await eventually(() => {
      const delivered = new Set(
        hook.delivered("message.stored").map((d) => d.event.data["messageId"]),
      );
      expect(delivered.size).toBe(total);
    }, 20_000);
    const stored = hook.deliveries.filter((d) => d.event.type === "message.stored");
    const byId = new Map<string, unknown>();
    for (const d of stored) {
      const messageId = d.event.data["messageId"];
      expect(sent.has(messageId as string)).toBe(true);
      // A repeat carries the same event id as the first delivery of that message.
      const seen = byId.get(d.id);
      if (seen !== undefined) expect(seen).toBe(messageId);
      byId.set(d.id, messageId);
    }
    expect(byId.size).toBe(total);
  });
});
