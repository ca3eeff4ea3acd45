import { createMemoryEngine, type Engine, EngineUnavailableError } from "@mrezhen/engine";
import { mintToken, TestClient, type UpgradeRefused } from "@mrezhen/testkit";
import { describe, expect, it } from "vitest";
import { startNode } from "./helpers.js";

/** [what is sent, the error code the protocol requires] */
const badFrames: [string, string, string][] = [
  ["not JSON", "{not json", "INVALID_JSON"],
  ["a JSON array", "[1,2]", "INVALID_FORMAT"],
  ["a JSON string", '"direct_message"', "INVALID_FORMAT"],
  ["a JSON number", "42", "INVALID_FORMAT"],
  ["JSON null", "null", "INVALID_FORMAT"],
  ["a non-string type", '{"type":7}', "INVALID_FORMAT"],
  ["no type", '{"to":"bob"}', "MISSING_TYPE"],
  ["an empty type", '{"type":""}', "MISSING_TYPE"],
  ["an unknown type", '{"type":"teleport"}', "UNKNOWN_TYPE"],
  ["a message without to", '{"type":"direct_message","content":"hi"}', "MISSING_RECIPIENT"],
  [
    "a message with an empty to",
    '{"type":"direct_message","to":"","content":"hi"}',
    "MISSING_RECIPIENT",
  ],
  [
    "a message with a numeric to",
    '{"type":"direct_message","to":5,"content":"hi"}',
    "INVALID_FORMAT",
  ],
  [
    "a message to an over-long user id",
    JSON.stringify({ type: "direct_message", to: "b".repeat(129), content: "hi" }),
    "INVALID_FORMAT",
  ],
  ["a message without content", '{"type":"direct_message","to":"bob"}', "EMPTY_CONTENT"],
  [
    "a message with empty content",
    '{"type":"direct_message","to":"bob","content":""}',
    "EMPTY_CONTENT",
  ],
  [
    "a message of whitespace",
    '{"type":"direct_message","to":"bob","content":" \\n\\t "}',
    "EMPTY_CONTENT",
  ],
  [
    "a message with object content",
    '{"type":"direct_message","to":"bob","content":{"a":1}}',
    "INVALID_FORMAT",
  ],
  [
    "a message over 5000 characters",
    JSON.stringify({ type: "direct_message", to: "bob", content: "x".repeat(5001) }),
    "CONTENT_TOO_LONG",
  ],
  [
    "a message to oneself",
    '{"type":"direct_message","to":"alice","content":"hi me"}',
    "SELF_MESSAGE",
  ],
  ["history without with", '{"type":"get_history"}', "MISSING_RECIPIENT"],
  [
    "history with a string limit",
    '{"type":"get_history","with":"bob","limit":"10"}',
    "INVALID_FORMAT",
  ],
];

describe("errors", () => {
  it.each(badFrames)(
    "answers %s with a structured error and keeps the connection",
    async (_name, frame, code) => {
      const { connect } = await startNode();
      const bob = await connect("bob");
      const alice = await connect("alice");
      alice.send(frame);
      const error = await alice.next("error");
      expect(error["code"]).toBe(code);
      expect(error["message"]).toEqual(expect.any(String));
      expect((error["message"] as string).length).toBeGreaterThan(5);
      // Nothing was stored or delivered, and the connection still serves.
      await bob.expectNone("direct_message", 100);
      alice.send({ type: "ping" });
      await alice.next("pong");
      bob.send({ type: "get_history", with: "alice" });
      expect((await bob.next("message_history"))["messages"]).toEqual([]);
    },
  );

  it("accepts content of exactly 5000 characters, counting an emoji as one", async () => {
    const { connect } = await startNode();
    const alice = await connect("alice");
    alice.send({ type: "direct_message", to: "bob", content: "😀".repeat(5000) });
    expect((await alice.next("message_ack"))["status"]).toBe("queued");
  });

  it("closes a connection that sends a frame over 64 KiB with 1009, and serves everyone else", async () => {
    const { connect } = await startNode();
    const bob = await connect("bob");
    const alice = await connect("alice");
    alice.send(
      JSON.stringify({ type: "direct_message", to: "bob", content: "x".repeat(70 * 1024) }),
    );
    expect((await alice.closed).code).toBe(1009);
    bob.send({ type: "ping" });
    await bob.next("pong");
    const carol = await connect("carol");
    carol.send({ type: "direct_message", to: "bob", content: "still here" });
    expect((await carol.next("message_ack"))["status"]).toBe("delivered");
  });

  it("accepts a frame just under 64 KiB", async () => {
    const { connect } = await startNode();
    const alice = await connect("alice");
    const frame = JSON.stringify({ type: "ping", padding: "p".repeat(64 * 1024 - 40) });
    expect(Buffer.byteLength(frame)).toBeLessThanOrEqual(64 * 1024);
    alice.send(frame);
    await alice.next("pong");
  });

  it("closes a connection that floods invalid frames with 1008, without hurting others", async () => {
    const { connect } = await startNode();
    const bob = await connect("bob");
    const mallory = await connect("mallory");
    for (let i = 0; i < 200; i++) mallory.send("garbage");
    expect((await mallory.closed).code).toBe(1008);
    expect(mallory.received.filter((f) => f.type === "error").length).toBeLessThanOrEqual(25);
    bob.send({ type: "ping" });
    await bob.next("pong");
  });

  it("answers INTERNAL_ERROR, never an ack, when storing fails", async () => {
    const engine = failingAppends(new Error("disk on fire"));
    const { connect } = await startNode({}, { engine });
    const alice = await connect("alice");
    alice.send({ type: "direct_message", to: "bob", content: "hi" });
    expect((await alice.next("error"))["code"]).toBe("INTERNAL_ERROR");
    await alice.expectNone("message_ack", 100);
    alice.send({ type: "ping" });
    await alice.next("pong");
  });

  it("answers UNAVAILABLE, never an ack, when the engine cannot store right now", async () => {
    const engine = failingAppends(new EngineUnavailableError("redis unreachable"));
    const { connect } = await startNode({}, { engine });
    const alice = await connect("alice");
    alice.send({ type: "direct_message", to: "bob", content: "hi" });
    expect((await alice.next("error"))["code"]).toBe("UNAVAILABLE");
    await alice.expectNone("message_ack", 100);
  });
});

describe("HTTP probes", () => {
  it("GET /health reports status, uptime in seconds and this node's open connections", async () => {
    const { url, connect } = await startNode();
    await connect("alice");
    await connect("alice");
    const response = await fetch(`${url}/health`);
    expect(response.status).toBe(200);
    const body = (await response.json()) as Record<string, unknown>;
    expect(body).toMatchObject({ status: "ok", connections: 2 });
    expect(body["uptime"]).toEqual(expect.any(Number));
  });

  it("GET /ready is 200 while serving and 503 draining once shutdown starts", async () => {
    const { url, node } = await startNode({}, { closeWithTest: false });
    expect(await (await fetch(`${url}/ready`)).json()).toEqual({ status: "ready" });
    const ws = await TestClient.connect(
      `${url.replace(/^http/, "ws")}/ws?token=${await mintToken({ sub: "alice" })}`,
    );
    // A client that stops reading holds the drain open, so the probe can be read meanwhile.
    ws.socket.pause();
    const closing = node.close();
    const ready = await fetch(`${url}/ready`);
    expect(ready.status).toBe(503);
    expect(await ready.json()).toMatchObject({ status: "draining" });
    const upgrade = await TestClient.connect(
      `${url.replace(/^http/, "ws")}/ws?token=${await mintToken({ sub: "bob" })}`,
    ).catch((e: unknown) => e);
    expect((upgrade as UpgradeRefused).status).toBe(503);
    ws.socket.resume();
    expect((await ws.closed).code).toBe(1012);
    await closing;
  });
});

/** A memory engine whose appends fail with `error`. */
function failingAppends(error: Error): Engine {
  const engine = createMemoryEngine({ rateLimit: { limit: 100, windowMs: 60_000 } });
  engine.messages.appendIfAllowed = async () => {
    throw error;
  };
  // The memory engine answers sends synchronously: its failure is a throw.
  engine.messages.appendIfAllowedNow = () => {
    throw error;
  };
  return engine;
}
