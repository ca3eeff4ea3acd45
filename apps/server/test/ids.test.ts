import { randomUUID } from "node:crypto";
import { connect as tcpConnect } from "node:net";
import { mintToken, redisForTests } from "@mrezhen/testkit";
import { afterAll, describe, expect, it } from "vitest";
import { startNode, type TestNode, upgradeRequest } from "./helpers.js";

/*
 * Ids that are not well-formed Unicode. A lone surrogate cannot be written as UTF-8: on its way
 * into Redis "vic\ud800" becomes "vic\ufffd", so before these checks the two ids shared one
 * queue, inbox and history, and one sender's clientMsgIds "k\ud800" and "k\udbff" were one key
 * (the second message was taken for a retry and never stored). Both engines must refuse such ids
 * the same way, at the upgrade (the token's sub) and in frames (to, with, clientMsgId).
 */

const redis = await redisForTests();
afterAll(() => redis?.close());

const engines: [string, () => Promise<TestNode>][] = [["memory engine", () => startNode()]];
if (redis !== undefined) {
  engines.push([
    "redis engine",
    () =>
      startNode({
        REDIS_URL: redis.url,
        REDIS_KEY_PREFIX: `${redis.prefix}${randomUUID().slice(0, 6)}:`,
      }),
  ]);
}

/** The twin of VIC on Redis: a lone high surrogate where VIC has U+FFFD. */
const VIC = "vic\ufffd";
const VIC_TWIN = "vic\ud800";

/** Sends an upgrade request by hand and returns the whole HTTP answer (status line to body). */
function upgradeAnswer(httpUrl: string, token: string): Promise<string> {
  const { port } = new URL(httpUrl);
  return new Promise((resolve, reject) => {
    const socket = tcpConnect(Number(port), "127.0.0.1");
    let answer = "";
    socket.on("data", (chunk) => {
      answer += chunk.toString();
      // A 101 leaves the socket open: the headers are all we need.
      if (answer.startsWith("HTTP/1.1 101") && answer.includes("\r\n\r\n")) socket.destroy();
    });
    socket.on("error", reject);
    socket.on("close", () => resolve(answer));
    socket.write(upgradeRequest(encodeURIComponent(token)));
  });
}

describe.each(engines)("ids that would collide on Redis (%s)", (_engine, start) => {
  it("refuses a token whose sub has a lone surrogate with 401 and a reason, so it cannot take its twin's queue", async () => {
    const node = await start();
    const carol = await node.connect("carol");
    carol.send({ type: "direct_message", to: VIC, content: "for vic only" });
    expect((await carol.next("message_ack"))["status"]).toBe("queued");

    const answer = await upgradeAnswer(node.url, await mintToken({ sub: VIC_TWIN }));
    expect(answer.split("\r\n")[0]).toBe("HTTP/1.1 401 Unauthorized");
    expect(answer).toMatch(
      /\r\n\r\nUnauthorized: subject is not well-formed Unicode \(it has a lone surrogate\)\.$/,
    );

    // The message is still waiting for its real recipient.
    const vic = await node.connect(VIC);
    const queued = await vic.next("direct_message");
    expect(queued["message"]).toMatchObject({ from: "carol", to: VIC, content: "for vic only" });
    expect(queued["queued"]).toBe(true);
  });

  it("refuses frames that name the twin, so nobody writes into or reads the real user's data through it", async () => {
    const node = await start();
    const vic = await node.connect(VIC);
    const carol = await node.connect("carol");
    carol.send({ type: "direct_message", to: VIC, content: "the real conversation" });
    expect((await carol.next("message_ack"))["status"]).toBe("delivered");
    await vic.next("direct_message");

    const mallory = await node.connect("mallory");
    for (const frame of [
      { type: "direct_message", to: VIC_TWIN, content: "into vic's inbox?" },
      { type: "typing", to: VIC_TWIN, state: "start" },
      { type: "get_history", with: VIC_TWIN },
      { type: "mark_read", with: VIC_TWIN, upTo: 1 },
      { type: "get_online_users", users: [VIC_TWIN] },
    ]) {
      mallory.send(frame);
      const error = await mallory.next("error");
      expect(error["code"]).toBe("INVALID_FORMAT");
      expect(error["message"]).toMatch(/user id: it is not well-formed Unicode/);
    }
    await vic.expectNone("direct_message", 100);
    await vic.expectNone("typing", 0);
    vic.send({ type: "get_history", with: "carol" });
    const history = await vic.next("message_history");
    expect((history["messages"] as { content: string }[]).map((m) => m.content)).toEqual([
      "the real conversation",
    ]);
  });

  it("refuses clientMsgIds with a lone surrogate, so two different keys never count as one", async () => {
    const node = await start();
    const bob = await node.connect("bob");
    const alice = await node.connect("alice");
    for (const clientMsgId of ["k\ud800", "k\udbff"]) {
      alice.send({ type: "direct_message", to: "bob", content: clientMsgId, clientMsgId });
      const error = await alice.next(["error", "message_ack"]);
      expect(error).toMatchObject({ type: "error", code: "INVALID_FORMAT" });
    }
    await bob.expectNone("direct_message", 100);
    // Two well-formed keys that differ are two messages, each stored and delivered.
    for (const clientMsgId of ["k\ufffd", "k\u{10000}"]) {
      alice.send({ type: "direct_message", to: "bob", content: clientMsgId, clientMsgId });
      expect(await alice.next("message_ack")).toMatchObject({ clientMsgId, status: "delivered" });
      expect((await bob.next("direct_message"))["message"]).toMatchObject({ clientMsgId });
    }
  });

  it("accepts a sub of 128 emoji (128 characters, 256 UTF-16 units) and refuses 129", async () => {
    const node = await start();
    const longest = "😀".repeat(128);
    const client = await node.connect(longest);
    client.send({ type: "get_online_users" });
    expect((await client.next("online_users"))["users"]).toContain(longest);
    const tooLong = await upgradeAnswer(node.url, await mintToken({ sub: "😀".repeat(129) }));
    expect(tooLong).toMatch(
      /^HTTP\/1\.1 401 .*Unauthorized: subject is longer than 128 characters\.$/s,
    );
    // And the 128-emoji id can be addressed in frames, as the token allows it.
    const carol = await node.connect("carol");
    carol.send({ type: "direct_message", to: longest, content: "hi" });
    expect((await carol.next("message_ack"))["status"]).toBe("delivered");
  });

  it("refuses a sub with a control character, or of whitespace only", async () => {
    const node = await start();
    for (const [sub, reason] of [
      ["alice\n", "subject contains a control character"],
      ["\u0000", "subject contains a control character"],
      ["  ", "subject is only whitespace"],
    ] as const) {
      const answer = await upgradeAnswer(node.url, await mintToken({ sub }));
      expect(answer.split("\r\n")[0]).toBe("HTTP/1.1 401 Unauthorized");
      expect(answer.endsWith(`Unauthorized: ${reason}.`)).toBe(true);
    }
  });
});
