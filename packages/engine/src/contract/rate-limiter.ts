import { afterEach, describe, expect, it } from "vitest";
import type { RateDecision } from "../ports.js";
import { type BackendFactory, type ContractBackend, sleep } from "./harness.js";

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
  });
}
