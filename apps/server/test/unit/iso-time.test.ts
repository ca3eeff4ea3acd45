import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { isoTimestamp } from "../../src/chat/iso-time.js";

describe("isoTimestamp", () => {
  it("is new Date(ms).toISOString() for any valid time, in any order of calls", () => {
    const max = 8.64e15; // the largest time a Date holds
    fc.assert(
      fc.property(
        fc.array(
          fc.oneof(
            fc.integer({ min: -max, max }),
            fc.double({ min: -max, max, noNaN: true }),
            // Near now, where consecutive calls share their second.
            fc.integer({ min: 1_764_600_000_000, max: 1_764_600_003_000 }),
          ),
          { minLength: 1, maxLength: 20 },
        ),
        (times) => {
          for (const ms of times) expect(isoTimestamp(ms)).toBe(new Date(ms).toISOString());
        },
      ),
      { numRuns: 2000 },
    );
  });

  it("throws as toISOString does for a time that is not valid", () => {
    for (const ms of [Number.NaN, Number.POSITIVE_INFINITY, 8.64e15 + 1, -8.64e15 - 1])
      expect(() => isoTimestamp(ms)).toThrow(RangeError);
  });
});
