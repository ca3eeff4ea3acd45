import { randomUUID } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import type { RateDecision, RateRefusal } from "../ports.js";
import { appendInput, type BackendFactory, type ContractBackend, sleep } from "./harness.js";

export function rateLimiterContract(factory: BackendFactory): void {
  describe("RateLimiter", () => {
    let backend: ContractBackend;
    afterEach(async () => backend?.close());

    const allowedCount = (decisions: RateDecision[]) => decisions.filter((d) => d.allowed).length;

    it("allows exactly the limit of concurrent actions and says when to retry", async () => {
      backend = await factory({ rateLimit: { limit: 5, windowMs: 10_000 } });
      const engine = await backend.node();
      const decisions = await Promise.all(
        Array.from({ length: 12 }, () => engine.rateLimiter.consume("alice")),
      );
      expect(allowedCount(decisions)).toBe(5);
      for (const refused of decisions.filter((d) => !d.allowed)) {
        expect(refused.retryAfterMs).toBeGreaterThan(0);
        expect(refused.retryAfterMs).toBeLessThanOrEqual(10_000);
      }
      // Another key has its own window.
      expect((await engine.rateLimiter.consume("bob")).allowed).toBe(true);
    });

    it("slides: room comes back as the oldest actions leave the window", async () => {
      backend = await factory({ rateLimit: { limit: 2, windowMs: 400 } });
      const engine = await backend.node();
      expect((await engine.rateLimiter.consume("alice")).allowed).toBe(true);
      await sleep(200);
      expect((await engine.rateLimiter.consume("alice")).allowed).toBe(true);
      expect((await engine.rateLimiter.consume("alice")).allowed).toBe(false);
      await sleep(260); // The first action has left the window; the second has not.
      expect((await engine.rateLimiter.consume("alice")).allowed).toBe(true);
      expect((await engine.rateLimiter.consume("alice")).allowed).toBe(false);
    });

    it("does not count refused actions", async () => {
      backend = await factory({ rateLimit: { limit: 1, windowMs: 300 } });
      const engine = await backend.node();
      expect((await engine.rateLimiter.consume("alice")).allowed).toBe(true);
      for (let i = 0; i < 5; i++)
        expect((await engine.rateLimiter.consume("alice")).allowed).toBe(false);
      await sleep(330);
      expect((await engine.rateLimiter.consume("alice")).allowed).toBe(true);
    });

    it("appendIfAllowed stores within the limit and refuses past it, storing nothing", async () => {
      backend = await factory({ rateLimit: { limit: 3, windowMs: 10_000 } });
      const engine = await backend.node();
      const results = await Promise.all(
        Array.from({ length: 5 }, (_, i) =>
          engine.messages.appendIfAllowed(appendInput("alice", "bob", `m${i}`)),
        ),
      );
      const refused = results.filter((r): r is RateRefusal => "refused" in r);
      expect(refused).toHaveLength(2);
      for (const r of refused) {
        expect(r.retryAfterMs).toBeGreaterThan(0);
        expect(r.retryAfterMs).toBeLessThanOrEqual(10_000);
      }
      const stored = await engine.messages.history("alice", "bob", 10);
      expect(stored.messages).toHaveLength(3);
      expect((await engine.messages.readInbox("bob", 0, 10)).newest).toBe(3);
      // One window with RateLimiter: the sends used it up.
      expect((await engine.rateLimiter.consume("alice")).allowed).toBe(false);
      // Others are not limited by alice's window.
      expect(
        "refused" in (await engine.messages.appendIfAllowed(appendInput("bob", "alice"))),
      ).toBe(false);
    });

    it("appendIfAllowed answers a retried clientMsgId without counting it", async () => {
      backend = await factory({ rateLimit: { limit: 1, windowMs: 10_000 } });
      const engine = await backend.node();
      const input = appendInput("alice", "bob", "once", { clientMsgId: "c-1" });
      const first = await engine.messages.appendIfAllowed(input);
      const retry = await engine.messages.appendIfAllowed({ ...input, id: randomUUID() });
      expect(retry).toEqual({ ...first, duplicate: true });
      // The window is full (the first send), so a new message is refused.
      const next = await engine.messages.appendIfAllowed(
        appendInput("alice", "bob", "twice", { clientMsgId: "c-2" }),
      );
      expect("refused" in next).toBe(true);
      expect((await engine.messages.history("alice", "bob", 10)).messages).toHaveLength(1);
    });

    it("counts one window across nodes", async ({ skip }) => {
      backend = await factory({ rateLimit: { limit: 6, windowMs: 10_000 } });
      // One node cannot show cross-node behaviour: say so, rather than pass without asserting.
      if (backend.maxNodes < 2) skip();
      const nodes = [await backend.node(), await backend.node()];
      const decisions = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          (nodes[i % 2] as (typeof nodes)[number]).rateLimiter.consume("alice"),
        ),
      );
      expect(allowedCount(decisions)).toBe(6);
    });

    it("appendIfAllowed counts one window across nodes, with RateLimiter", async ({ skip }) => {
      backend = await factory({ rateLimit: { limit: 6, windowMs: 10_000 } });
      if (backend.maxNodes < 2) skip();
      const nodes = [await backend.node(), await backend.node()];
      const results = await Promise.all(
        Array.from({ length: 20 }, (_, i) => {
          const node = nodes[i % 2] as (typeof nodes)[number];
          return i % 4 === 3
            ? node.rateLimiter.consume("alice")
            : node.messages.appendIfAllowed(appendInput("alice", "bob", `m${i}`));
        }),
      );
      const allowed = results.filter((r) =>
        "refused" in r ? false : "allowed" in r ? r.allowed : true,
      );
      expect(allowed).toHaveLength(6);
    });
  });
}
