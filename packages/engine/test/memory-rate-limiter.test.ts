import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { MemoryRateLimiter } from "../src/memory/rate-limiter.js";

describe("the memory engine's rate limiter", () => {
  it("decides as an exact sliding window over the allowed actions, whatever the limit", async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 40 }),
        fc.integer({ min: 1, max: 1000 }),
        fc.array(fc.tuple(fc.integer({ min: 0, max: 300 }), fc.constantFrom("a", "b")), {
          maxLength: 300,
        }),
        async (limit, windowMs, steps) => {
          let clock = 1_000_000;
          const limiter = new MemoryRateLimiter({ limit, windowMs }, () => clock);
          const allowed = new Map<string, number[]>();
          try {
            for (const [advance, key] of steps) {
              clock += advance;
              // The model: every allowed action, counted while it is younger than the window.
              const inWindow = (allowed.get(key) ?? []).filter((t) => t > clock - windowMs);
              const expected =
                inWindow.length < limit
                  ? { allowed: true, retryAfterMs: 0 }
                  : { allowed: false, retryAfterMs: (inWindow[0] as number) + windowMs - clock };
              expect(await limiter.consume(key)).toEqual(expected);
              if (expected.allowed) allowed.set(key, [...inWindow, clock]);
            }
          } finally {
            limiter.close();
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it("keeps only the actions of one window when the limit is out of the way", async () => {
    let clock = 0;
    const limiter = new MemoryRateLimiter({ limit: 1_000_000_000, windowMs: 1000 }, () => clock);
    try {
      for (let i = 0; i < 100_000; i++) {
        clock += 1; // 1,000 actions per window, 100 windows
        expect((await limiter.consume("alice")).allowed).toBe(true);
      }
      // The ring holds what one window needs, not every action ever allowed.
      const windows = (limiter as unknown as { windows: Map<string, { times: Float64Array }> })
        .windows;
      expect(windows.get("alice")?.times.length).toBeLessThanOrEqual(1024);
    } finally {
      limiter.close();
    }
  });
});
