/**
 * The server API (/api/v1) on real nodes, with real clients, on both engines: auth, every
 * route's validation and success, and disconnect/revoke across two nodes on Redis.
 */
import { randomUUID } from "node:crypto";
import { request as httpRequest } from "node:http";
import { mintToken, redisForTests, TestClient, UpgradeRefused } from "@mrezhen/testkit";
import { afterAll, describe, expect, it } from "vitest";
import { startNode, type TestNode } from "./helpers.js";

const redis = await redisForTests();
afterAll(() => redis?.close());

const KEY = "test-api-key-0123456789";
const NEXT_KEY = "rotated-api-key-9876543210";

interface Answer {
  status: number;
  body: Record<string, unknown>;
  headers: Headers;
}

async function call(
  node: TestNode,
  method: string,
  path: string,
  body?: unknown,
  key: string | null = KEY,
): Promise<Answer> {
  const headers: Record<string, string> = {};
  if (key !== null) headers["authorization"] = `Bearer ${key}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(`${node.url}${path}`, {
    method,
    headers,
    ...(body === undefined ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) }),
  });
  const text = await response.text();
  return {
    status: response.status,
    body: text === "" ? {} : (JSON.parse(text) as Record<string, unknown>),
    headers: response.headers,
  };
}

/** The body of a refused upgrade (fetch cannot send the Connection: upgrade header). */
function upgradeRefusal(node: TestNode, token: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const request = httpRequest(`${node.url}/ws?token=${token}`, {
      headers: {
        connection: "upgrade",
        upgrade: "websocket",
        "sec-websocket-version": "13",
        "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
      },
    });
    request.on("response", (response) => {
      let text = "";
      response.on("data", (chunk: Buffer) => {
        text += chunk.toString();
      });
      response.on("end", () => resolve(text));
    });
    request.on("upgrade", () => reject(new Error("upgraded")));
    request.on("error", reject);
    request.end();
  });
}

const send = (node: TestNode, body: unknown, key: string | null = KEY) =>
  call(node, "POST", "/api/v1/messages", body, key);

describe("with API_KEY unset", () => {
  it("answers 404 on every /api/v1 route", async () => {
    const node = await startNode();
    for (const [method, path] of [
      ["POST", "/api/v1/messages"],
      ["GET", "/api/v1/presence?users=a"],
      ["GET", "/api/v1/users/a"],
      ["POST", "/api/v1/users/a/disconnect"],
      ["POST", "/api/v1/users/a/revoke"],
      ["GET", "/api/v1/conversations/a/b/messages"],
      ["GET", "/api/v1/openapi.json"],
    ] as const) {
      const answer = await call(node, method, path, method === "POST" ? {} : undefined);
      expect(answer.status, `${method} ${path}`).toBe(404);
    }
  });
});

for (const engine of ["memory", "redis"] as const) {
  describe.skipIf(engine === "redis" && !redis)(`server API (${engine} engine)`, () => {
    const prefix = `${redis?.prefix ?? ""}${randomUUID().slice(0, 6)}:`;
    const env = (extra: Record<string, string> = {}, nodeId = "node-1") => ({
      API_KEY: `${KEY}, ${NEXT_KEY}`,
      ...(engine === "redis" && redis !== undefined
        ? { REDIS_URL: redis.url, REDIS_KEY_PREFIX: prefix, NODE_ID: nodeId }
        : {}),
      ...extra,
    });
    /** A fresh user name, so tests sharing a Redis prefix never meet. */
    const user = (name: string) => `${name}-${randomUUID().slice(0, 6)}`;

    it("refuses a request without a key, with a wrong key, and takes every listed key", async () => {
      const node = await startNode(env());
      const [alice, bob] = [user("alice"), user("bob")];
      const body = { from: alice, to: bob, content: "hi" };
      const none = await send(node, body, null);
      expect(none.status).toBe(401);
      expect(none.body).toEqual({
        code: "UNAUTHORIZED",
        message: "A valid API key is required.",
      });
      expect((await send(node, body, "wrong-key-0123456789")).status).toBe(401);
      expect((await send(node, body, `${KEY}x`)).status).toBe(401);
      expect((await call(node, "GET", `/api/v1/users/${alice}`, undefined, "nope")).status).toBe(
        401,
      );
      // Rotation: both keys of API_KEY work.
      expect((await send(node, body, KEY)).status).toBe(200);
      expect((await send(node, { ...body, content: "again" }, NEXT_KEY)).status).toBe(200);
    });

    it("sends as a user: stored, delivered live, copied to the sender's devices, idempotent", async () => {
      const node = await startNode(env());
      const [alice, bob] = [user("alice"), user("bob")];
      const bobClient = await node.connect(bob);
      const aliceDevice = await node.connect(alice);
      const answer = await send(node, {
        from: alice,
        to: bob,
        content: "from the backend",
        clientMsgId: "k1",
      });
      expect(answer.status).toBe(200);
      expect(answer.body).toMatchObject({
        to: bob,
        status: "delivered",
        seq: 1,
        clientMsgId: "k1",
        duplicate: false,
      });
      expect(answer.body["position"]).toBeTypeOf("number");
      const received = await bobClient.next("direct_message");
      expect(received["message"]).toMatchObject({
        id: answer.body["messageId"],
        from: alice,
        content: "from the backend",
        seq: 1,
      });
      const copy = await aliceDevice.next("direct_message");
      expect((copy["message"] as { id: string }).id).toBe(answer.body["messageId"]);

      const retry = await send(node, {
        from: alice,
        to: bob,
        content: "from the backend",
        clientMsgId: "k1",
      });
      expect(retry.body).toMatchObject({ messageId: answer.body["messageId"], duplicate: true });
      await bobClient.expectNone("direct_message");

      // Offline: queued, and flushed on the next connection.
      const carol = user("carol");
      const queued = await send(node, { from: alice, to: carol, content: "later" });
      expect(queued.body["status"]).toBe("queued");
      const carolClient = await TestClient.connect(
        `${node.wsUrl}?token=${await mintToken({ sub: carol })}`,
      );
      const flushed = await carolClient.next("direct_message");
      expect(flushed).toMatchObject({ queued: true, message: { content: "later" } });
      await carolClient.close();
    });

    it("copies an API send once to each of the sender's connections, however many", async () => {
      const node = await startNode(env());
      const [alice, bob] = [user("alice"), user("bob")];
      const devices = [await node.connect(alice), await node.connect(alice)];
      const answer = await send(node, { from: alice, to: bob, content: "two devices" });
      for (const device of devices) {
        const copy = await device.next("direct_message");
        expect((copy["message"] as { id: string }).id).toBe(answer.body["messageId"]);
        await device.expectNone("direct_message");
      }
    });

    it("validates each field of a send with the WebSocket's codes", async () => {
      const node = await startNode(env());
      const [alice, bob] = [user("alice"), user("bob")];
      const ok = { from: alice, to: bob, content: "x" };
      const cases: [unknown, number, string, RegExp?][] = [
        [{ to: bob, content: "x" }, 400, "INVALID_FORMAT", /from/],
        [{ ...ok, from: 42 }, 400, "INVALID_FORMAT", /from/],
        [{ ...ok, from: "bad\u0000id" }, 400, "INVALID_FORMAT", /from/],
        [{ ...ok, from: "x".repeat(129) }, 400, "INVALID_FORMAT", /from/],
        [{ from: alice, content: "x" }, 400, "MISSING_RECIPIENT", /to/],
        [{ ...ok, to: "" }, 400, "MISSING_RECIPIENT", /to/],
        [{ ...ok, to: 7 }, 400, "INVALID_FORMAT", /to/],
        [{ ...ok, to: "\ud800" }, 400, "INVALID_FORMAT", /to/],
        [{ from: alice, to: bob }, 400, "EMPTY_CONTENT", /content/],
        [{ ...ok, content: "   " }, 400, "EMPTY_CONTENT", /content/],
        [{ ...ok, content: 5 }, 400, "INVALID_FORMAT", /content/],
        [{ ...ok, content: "y".repeat(5001) }, 400, "CONTENT_TOO_LONG", /content/],
        [{ ...ok, clientMsgId: "z".repeat(65) }, 400, "INVALID_FORMAT", /clientMsgId/],
        [{ ...ok, clientMsgId: 3 }, 400, "INVALID_FORMAT", /clientMsgId/],
        [{ ...ok, applyLimits: "yes" }, 400, "INVALID_FORMAT", /applyLimits/],
        [{ ...ok, to: alice }, 400, "SELF_MESSAGE"],
        ["{not json", 400, "INVALID_JSON"],
        [[1, 2], 400, "INVALID_FORMAT"],
      ];
      for (const [body, status, code, field] of cases) {
        const answer = await send(node, body);
        expect([answer.status, answer.body["code"]], JSON.stringify(body)).toEqual([status, code]);
        if (field !== undefined) expect(answer.body["message"]).toMatch(field);
      }
    });

    it("counts an API send against the sender's limits only with applyLimits", async () => {
      const node = await startNode(env({ RATE_LIMIT_MESSAGES: "1" }));
      const [alice, bob] = [user("alice"), user("bob")];
      for (let i = 0; i < 3; i++)
        expect((await send(node, { from: alice, to: bob, content: `free ${i}` })).status).toBe(200);
      expect(
        (await send(node, { from: alice, to: bob, content: "a", applyLimits: true })).status,
      ).toBe(200);
      const refused = await send(node, { from: alice, to: bob, content: "b", applyLimits: true });
      expect(refused.status).toBe(429);
      expect(refused.body).toMatchObject({ code: "RATE_LIMITED", limit: "messages" });
      expect(refused.headers.get("retry-after")).toMatch(/^\d+$/);
    });

    it("answers presence: online or not, with connection counts", async () => {
      const node = await startNode(env());
      const [alice, bob, carol] = [user("alice"), user("bob"), user("carol")];
      await node.connect(alice);
      await node.connect(alice);
      await node.connect(bob);
      const answer = await call(
        node,
        "GET",
        `/api/v1/presence?users=${carol},${alice},${bob},${alice}`,
      );
      expect(answer.status).toBe(200);
      expect(answer.body).toEqual({
        users: [
          { userId: carol, online: false, connections: 0 },
          { userId: alice, online: true, connections: 2 },
          { userId: bob, online: true, connections: 1 },
        ],
      });
      const one = await call(node, "GET", `/api/v1/users/${encodeURIComponent(alice)}`);
      expect(one.body).toEqual({ userId: alice, online: true, connections: 2 });

      for (const path of [
        "/api/v1/presence",
        "/api/v1/presence?users=",
        `/api/v1/presence?users=${Array.from({ length: 101 }, (_, i) => `u${i}`).join(",")}`,
        "/api/v1/presence?users=a,%01",
        `/api/v1/users/${"x".repeat(129)}`,
      ]) {
        const bad = await call(node, "GET", path);
        expect([bad.status, bad.body["code"]], path).toEqual([400, "INVALID_FORMAT"]);
      }
    });

    it("disconnects every connection of a user, with the default or a given code", async () => {
      const node = await startNode(env());
      const alice = user("alice");
      const first = await node.connect(alice);
      const second = await node.connect(alice);
      const started = Date.now();
      const answer = await call(node, "POST", `/api/v1/users/${alice}/disconnect`);
      expect(answer.body).toEqual({
        userId: alice,
        code: 4003,
        reason: "disconnected by the service",
      });
      expect(await first.closed).toEqual({ code: 4003, reason: "disconnected by the service" });
      expect(await second.closed).toEqual({ code: 4003, reason: "disconnected by the service" });
      expect(Date.now() - started).toBeLessThan(1000);

      const third = await node.connect(alice);
      await call(node, "POST", `/api/v1/users/${alice}/disconnect`, {
        code: 4100,
        reason: "banned",
      });
      expect(await third.closed).toEqual({ code: 4100, reason: "banned" });

      for (const body of [
        { code: 1000 },
        { code: 5000 },
        { code: "4003" },
        { reason: "é".repeat(62) },
        { reason: 1 },
      ]) {
        const bad = await call(node, "POST", `/api/v1/users/${alice}/disconnect`, body);
        expect([bad.status, bad.body["code"]], JSON.stringify(body)).toEqual([
          400,
          "INVALID_FORMAT",
        ]);
      }
    });

    it("revokes a user's older tokens: open connections close with 4001, upgrades get 401", async () => {
      const node = await startNode(env());
      const alice = user("alice");
      const oldToken = await mintToken({ sub: alice });
      const open = await TestClient.connect(`${node.wsUrl}?token=${oldToken}`);
      open.send({ type: "ping" });
      await open.next("pong");
      // The next whole second: the token above (iat in whole seconds) was issued before it.
      const before = (Math.floor(Date.now() / 1000) + 1) * 1000;
      const answer = await call(node, "POST", `/api/v1/users/${alice}/revoke`, { before });
      expect(answer.body).toEqual({ userId: alice, before: new Date(before).toISOString() });
      expect((await open.next("error"))["code"]).toBe("UNAUTHORIZED");
      expect(await open.closed).toEqual({ code: 4001, reason: "token revoked" });
      await expect(TestClient.connect(`${node.wsUrl}?token=${oldToken}`)).rejects.toEqual(
        new UpgradeRefused(401),
      );
      expect(await upgradeRefusal(node, oldToken)).toBe("Unauthorized: token revoked.");
      // A token issued from `before` on is accepted; a refresh with a revoked one is refused.
      // A loop, not one timer: timers run on a monotonic clock and may fire while Date.now() is
      // still a millisecond short of `before`, and a token minted then (iat a second earlier)
      // is revoked.
      while (Date.now() < before)
        await new Promise((resolve) => setTimeout(resolve, before - Date.now() + 1));
      const fresh = await node.connect(alice);
      fresh.send({ type: "refresh", token: oldToken });
      expect(await fresh.next("error")).toMatchObject({
        code: "UNAUTHORIZED",
        message: expect.stringContaining("token revoked"),
      });

      for (const body of [{ before: "yesterday-ish" }, { before: -1 }, { before: true }]) {
        const bad = await call(node, "POST", `/api/v1/users/${alice}/revoke`, body);
        expect([bad.status, bad.body["code"]], JSON.stringify(body)).toEqual([
          400,
          "INVALID_FORMAT",
        ]);
      }
      // Without a body: revoked from now.
      const now = await call(node, "POST", `/api/v1/users/${user("bob")}/revoke`);
      expect(now.status).toBe(200);
    });

    it("pages a conversation's history for moderation", async () => {
      const node = await startNode(env());
      const [alice, bob] = [user("alice"), user("bob")];
      for (let i = 1; i <= 5; i++)
        await send(node, { from: i % 2 ? alice : bob, to: i % 2 ? bob : alice, content: `m${i}` });
      const page = await call(
        node,
        "GET",
        `/api/v1/conversations/${bob}/${alice}/messages?limit=2`,
      );
      expect(page.status).toBe(200);
      expect(page.body["hasMore"]).toBe(true);
      const messages = page.body["messages"] as { content: string; seq: number; from: string }[];
      expect(messages.map((m) => [m.content, m.seq])).toEqual([
        ["m4", 4],
        ["m5", 5],
      ]);
      expect(messages[1]?.from).toBe(alice);
      const older = await call(
        node,
        "GET",
        `/api/v1/conversations/${alice}/${bob}/messages?before=4`,
      );
      expect((older.body["messages"] as { content: string }[]).map((m) => m.content)).toEqual([
        "m1",
        "m2",
        "m3",
      ]);
      expect(older.body["hasMore"]).toBe(false);
      for (const query of ["limit=0", "limit=101", "limit=x", "before=0", "before=x"]) {
        const bad = await call(
          node,
          "GET",
          `/api/v1/conversations/${alice}/${bob}/messages?${query}`,
        );
        expect([bad.status, bad.body["code"]], query).toEqual([400, "INVALID_FORMAT"]);
      }
      const badUser = await call(node, "GET", `/api/v1/conversations/${alice}/%20/messages`);
      expect([badUser.status, badUser.body["code"]]).toEqual([400, "INVALID_FORMAT"]);
    });

    it("answers unknown API routes with a JSON 404", async () => {
      const node = await startNode(env());
      const answer = await call(node, "GET", "/api/v1/nothing");
      expect(answer).toMatchObject({ status: 404, body: { code: "NOT_FOUND" } });
    });

    it.skipIf(engine === "memory")(
      "disconnects and revokes on every node (two nodes on Redis)",
      async () => {
        const a = await startNode(env({}, "node-a"));
        const b = await startNode(env({}, "node-b"));
        const alice = user("alice");
        const onA = await a.connect(alice);
        const token = await mintToken({ sub: alice });
        const onB = await TestClient.connect(`${b.wsUrl}?token=${token}`);
        onB.send({ type: "ping" });
        await onB.next("pong");
        expect((await call(a, "GET", `/api/v1/users/${alice}`)).body["connections"]).toBe(2);

        const started = Date.now();
        await call(a, "POST", `/api/v1/users/${alice}/disconnect`, { reason: "moderation" });
        expect(await onA.closed).toEqual({ code: 4003, reason: "moderation" });
        expect(await onB.closed).toEqual({ code: 4003, reason: "moderation" });
        expect(Date.now() - started).toBeLessThan(1000);

        const again = await TestClient.connect(`${b.wsUrl}?token=${token}`);
        again.send({ type: "ping" });
        await again.next("pong");
        const before = (Math.floor(Date.now() / 1000) + 1) * 1000;
        await call(a, "POST", `/api/v1/users/${alice}/revoke`, { before });
        expect(await again.closed).toEqual({ code: 4001, reason: "token revoked" });
        // Node b refuses the revoked token at the upgrade (its copy got the broadcast).
        await expect(TestClient.connect(`${b.wsUrl}?token=${token}`)).rejects.toEqual(
          new UpgradeRefused(401),
        );
        // A node started after the revocation loads it.
        const c = await startNode(env({}, "node-c"));
        await expect(TestClient.connect(`${c.wsUrl}?token=${token}`)).rejects.toEqual(
          new UpgradeRefused(401),
        );
      },
    );
  });
}
