import { mintToken } from "@mrezhen/testkit";
import { decodeJwt } from "jose";
import { describe, expect, it } from "vitest";
import { startNode } from "./helpers.js";

// Small figures so that a token's whole life fits in a test: notice 2 s before exp (at most half
// of what is left, see Session.setToken), sweep every 100 ms.
const FAST = { TOKEN_EXPIRING_NOTICE_MS: "2000", TOKEN_SWEEP_INTERVAL_MS: "100" };

const expOf = (token: string) => decodeJwt(token).exp as number;
const sleepUntil = (ms: number) =>
  new Promise((resolve) => setTimeout(resolve, Math.max(0, ms - Date.now())));

describe("refreshing the token of a live connection", () => {
  it("warns before exp; a refresh then keeps the connection open past the first exp", async () => {
    const { connect } = await startNode(FAST);
    const firstToken = await mintToken({ sub: "alice", ttlSeconds: 3 });
    const alice = await connect("alice", { ttlSeconds: 3 });
    const bob = await connect("bob");
    const firstExp = expOf(firstToken);

    const notice = await alice.next("token_expiring", 4000);
    expect(notice).toEqual({ type: "token_expiring", exp: firstExp });
    // Told before the deadline, with time to act.
    expect(firstExp * 1000 - Date.now()).toBeGreaterThan(200);

    const fresh = await mintToken({ sub: "alice", ttlSeconds: 60 });
    alice.send({ type: "refresh", token: fresh });
    expect(await alice.next(["refreshed", "error"])).toEqual({
      type: "refreshed",
      exp: expOf(fresh),
    });

    await sleepUntil(firstExp * 1000 + 1500);
    alice.send({ type: "direct_message", to: "bob", content: "still here" });
    expect(await alice.next("message_ack")).toMatchObject({ status: "delivered" });
    expect(await bob.next("direct_message")).toMatchObject({ message: { content: "still here" } });
    expect(alice.inbox.filter((frame) => frame.type === "error")).toEqual([]);
  });

  it("refuses another user's token (FORBIDDEN), and the connection closes at its own exp", async () => {
    const { connect } = await startNode(FAST);
    const firstExp = expOf(await mintToken({ sub: "alice", ttlSeconds: 3 }));
    const alice = await connect("alice", { ttlSeconds: 3 });
    await alice.next("token_expiring", 4000);

    alice.send({ type: "refresh", token: await mintToken({ sub: "bob", ttlSeconds: 3600 }) });
    const refusal = await alice.next("error");
    expect(refusal).toMatchObject({ code: "FORBIDDEN" });
    expect(refusal["message"]).toMatch(/another user.*keeps its current token/);
    // The connection still serves, as alice, until the original deadline...
    alice.send({ type: "ping" });
    await alice.next("pong");
    // ...and no longer.
    const expired = await alice.next("error", 4000);
    expect(expired).toMatchObject({ code: "UNAUTHORIZED" });
    const closed = await alice.closed;
    expect(closed.code).toBe(4001);
    expect(Date.now()).toBeGreaterThanOrEqual(firstExp * 1000);
    expect(Date.now()).toBeLessThan(firstExp * 1000 + 1000);
  });

  it("refuses a token that is not valid (UNAUTHORIZED), and the connection carries on", async () => {
    const { connect } = await startNode(FAST);
    const alice = await connect("alice");
    for (const token of [
      await mintToken({ sub: "alice", ttlSeconds: -5 }),
      await mintToken({ sub: "alice", secret: "another-secret-that-is-long-enough-1234" }),
      "not-a-jwt",
    ]) {
      alice.send({ type: "refresh", token });
      const error = await alice.next("error");
      expect(error).toMatchObject({ code: "UNAUTHORIZED" });
      expect(error["message"]).toMatch(
        /^The refresh token was refused: .+\. This connection keeps/,
      );
      // One refresh a second: wait out the limit between attempts.
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
    alice.send({ type: "ping" });
    await alice.next("pong");
  });

  it("answers in order: frames sent after a refresh wait for it", async () => {
    const { connect } = await startNode(FAST);
    const alice = await connect("alice");
    const fresh = await mintToken({ sub: "alice", ttlSeconds: 600 });
    alice.send({ type: "refresh", token: fresh });
    alice.send({ type: "ping" });
    const first = await alice.next(["refreshed", "pong"]);
    const second = await alice.next(["refreshed", "pong"]);
    expect([first.type, second.type]).toEqual(["refreshed", "pong"]);
  });

  it("allows one refresh a second per connection; more are refused unchecked", async () => {
    const { connect } = await startNode(FAST);
    const alice = await connect("alice");
    const fresh = await mintToken({ sub: "alice", ttlSeconds: 600 });
    for (let i = 0; i < 5; i++) alice.send({ type: "refresh", token: fresh });
    expect(await alice.next(["refreshed", "error"])).toMatchObject({ type: "refreshed" });
    for (let i = 0; i < 4; i++) {
      expect(await alice.next(["refreshed", "error"])).toMatchObject({
        code: "RATE_LIMITED",
        limit: "refresh",
      });
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
    alice.send({ type: "refresh", token: fresh });
    expect(await alice.next(["refreshed", "error"])).toMatchObject({ type: "refreshed" });
  });
});
