import { describe, expect, it } from "vitest";
import { TokenDeadlines, type TokenHolder } from "../../src/chat/token-deadlines.js";

function holder(expiresAt: number, expiringNoticeAt = 0): TokenHolder & { name: string } {
  return { expiresAt, expiringNoticeAt, tokenBucket: -1, name: `exp ${expiresAt}` };
}

describe("TokenDeadlines", () => {
  it("hands out a holder once the bucket of its next deadline has begun, not before", () => {
    const deadlines = new TokenDeadlines(1000, 10_000);
    const soon = holder(14_500, 12_300);
    const later = holder(60_000);
    deadlines.schedule(soon);
    deadlines.schedule(later);
    expect(deadlines.due(11_999)).toEqual([]);
    // 12,300 is in the bucket that begins at 12,000: handed out early, the caller checks.
    expect(deadlines.due(12_000)).toEqual([soon]);
    expect(soon.tokenBucket).toBe(-1);
    expect(deadlines.size).toBe(1);
    expect(deadlines.due(59_999)).toEqual([]);
    expect(deadlines.due(60_000)).toEqual([later]);
    expect(deadlines.size).toBe(0);
  });

  it("schedules the expiry once the notice was sent, and a deadline already past for the next sweep", () => {
    const deadlines = new TokenDeadlines(1000, 10_000);
    const noticed = holder(30_000, 0);
    deadlines.schedule(noticed);
    expect(deadlines.due(29_000)).toEqual([]);
    expect(deadlines.due(30_000)).toEqual([noticed]);
    const expired = holder(5_000, 4_000);
    deadlines.schedule(expired);
    expect(deadlines.due(30_500)).toEqual([]); // its bucket (31,000) is the next one
    expect(deadlines.due(31_000)).toEqual([expired]);
  });

  it("forgets an unscheduled holder entirely, so that closed connections are not kept", () => {
    const deadlines = new TokenDeadlines(100, 0);
    const holders = Array.from({ length: 50 }, (_, i) => holder(1_000 + i * 37));
    for (const h of holders) deadlines.schedule(h);
    deadlines.schedule(holders[0] as TokenHolder & { name: string }); // again: moved, not doubled
    expect(deadlines.size).toBe(50);
    for (const h of holders.slice(0, 40)) deadlines.unschedule(h);
    expect(deadlines.size).toBe(10);
    expect(new Set(deadlines.due(1_000_000))).toEqual(new Set(holders.slice(40)));
    expect(deadlines.size).toBe(0);
    deadlines.unschedule(holders[45] as TokenHolder & { name: string }); // already out: no-op
  });

  it("takes every passed bucket after a jump of the clock, and none twice", () => {
    const deadlines = new TokenDeadlines(10, 0);
    const a = holder(50);
    const b = holder(5_000_000);
    const c = holder(9_000_000_000);
    for (const h of [a, b, c]) deadlines.schedule(h);
    expect(new Set(deadlines.due(8_000_000_000))).toEqual(new Set([a, b]));
    expect(deadlines.due(8_000_000_001)).toEqual([]);
    expect(deadlines.due(9_000_000_000)).toEqual([c]);
  });
});
