import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import fc from "fast-check";
import { describe, expect, it, onTestFinished } from "vitest";
import { appendInput, takeAllQueued } from "../src/contract/harness.js";
import { createMemoryEngine } from "../src/memory/engine.js";
import type { MemoryMessageStore } from "../src/memory/messages.js";
import { memoryStoredBytes, PackedLog } from "../src/memory/packed-log.js";
import type { RetentionOptions } from "../src/ports.js";

interface ModelRow {
  readonly a: number;
  readonly b: number;
  readonly id: string;
  readonly text: string;
}

type Step =
  | { readonly kind: "push"; readonly row: ModelRow }
  | { readonly kind: "drop"; readonly below: number };

/** Texts of any size and script, lone surrogates aside (UTF-8 cannot carry them). */
const text = fc.oneof(
  fc.string({ unit: "grapheme", maxLength: 40 }),
  fc.string({ unit: "binary", maxLength: 3000 }),
  fc.constantFrom("", "😀", "ж", "\u0000", "x".repeat(5000)),
  // Rows larger than a chunk's usual text room: they get a chunk sized to them.
  fc.constantFrom("x".repeat(30_000), "ж".repeat(9000), "😀".repeat(4000)),
);

const step: fc.Arbitrary<Step> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc
      .record({ a: fc.double({ noNaN: true }), b: fc.integer(), id: text, text })
      .map((row) => ({ kind: "push" as const, row })),
  },
  {
    weight: 1,
    arbitrary: fc.integer({ min: -5, max: 700 }).map((below) => ({ kind: "drop" as const, below })),
  },
);

describe("PackedLog", () => {
  it("reads back what capped arrays of rows would hold, through growth, drops and chunk reuse", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 300 }),
        fc.array(fc.tuple(fc.constantFrom(0, 1), step), { maxLength: 600 }),
        (cap, steps) => {
          // Two logs, so chunks one drops are reused by the other (the pool is shared).
          const logs = [new PackedLog(2, true, cap), new PackedLog(2, true, cap)];
          const models: ModelRow[][] = [[], []];
          let pushed = 0;
          for (const [which, s] of steps) {
            const log = logs[which] as PackedLog;
            let model = models[which] as ModelRow[];
            if (s.kind === "push") {
              const index = log.pushTexts(s.row.id, s.row.text);
              // A new row's numbers are 0, whatever a reused chunk held before.
              expect([log.get(index, 0), log.get(index, 1)]).toEqual([0, 0]);
              log.set(index, 0, s.row.a);
              log.set(index, 1, pushed++);
              model.push({ ...s.row, b: pushed - 1 });
              if (model.length > cap) model = model.slice(model.length - cap);
              expect(index).toBe(model.length - 1);
            } else {
              // Drop rows numbered below `below` (numbers grow, so they are a head).
              log.dropWhile((l) => l.get(0, 1) < s.below);
              model = model.filter((row) => row.b >= s.below);
            }
            models[which] = model;
            expect(log.length).toBe(model.length);
          }
          for (const [which, model] of models.entries()) {
            const log = logs[which] as PackedLog;
            model.forEach((row, index) => {
              expect(log.get(index, 0)).toBe(row.a);
              expect(log.get(index, 1)).toBe(row.b);
              expect(log.id(index)).toBe(row.id);
              expect(log.text(index)).toBe(row.text);
            });
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it("sizes chunks to what they hold: a large row does not reserve three times its size", () => {
    // 1,000 conversations of one 30 KB stored message each (the per-sender storage attack). A
    // chunk was sized to 3 bytes per UTF-16 unit, rounded up to a power of two: 128 KiB each.
    const text = "x".repeat(30_000);
    // Where there is no such count (older commits), the growth of external array buffers.
    const stored =
      typeof memoryStoredBytes === "function"
        ? memoryStoredBytes
        : () => process.memoryUsage().arrayBuffers;
    const before = stored();
    const logs = Array.from({ length: 1000 }, () => new PackedLog(2, true, 10_000));
    for (const log of logs) log.pushTexts("00000000-0000-4000-8000-000000000000", text);
    const perLog = (stored() - before) / logs.length;
    console.log(`[figures] a log of one 30,036-byte row reserves ${perLog} bytes`);
    // Texts in a buffer at most 1/8 over their size, and 4 rows of 4 numbers.
    expect(perLog).toBeLessThanOrEqual(30_036 * 1.125 + 4 * 4 * 8);
    // Small rows after it share the large chunk's spare room, then chunks grow as before.
    const [first] = logs as [PackedLog];
    for (let i = 0; i < 100; i++) first.pushTexts(`id-${i}`, "small");
    expect(first.text(0)).toBe(text);
    expect(first.text(100)).toBe("small");
    expect(first.id(57)).toBe("id-56");
  });

  it("holds rows without texts", () => {
    const log = new PackedLog(3, false, 1000);
    for (let i = 0; i < 2500; i++) log.set(log.push(), 2, i);
    expect(log.length).toBe(1000);
    expect(log.get(0, 2)).toBe(1500);
    expect(log.get(999, 2)).toBe(2499);
    log.dropWhile((l) => l.get(0, 2) < 2400);
    expect(log.length).toBe(100);
    expect(log.get(0, 2)).toBe(2400);
  });

  it("refuses a push of the wrong kind", () => {
    expect(() => new PackedLog(1, false, 10).pushTexts("id", "text")).toThrow(/no texts/);
    expect(() => new PackedLog(1, true, 10).push()).toThrow(/holds texts/);
  });
});

function memoryStore(retention: RetentionOptions, now: () => number) {
  const engine = createMemoryEngine({
    rateLimit: { limit: 1_000_000_000, windowMs: 60_000 },
    retention,
    now,
  });
  onTestFinished(() => engine.close());
  return { store: engine.messages as MemoryMessageStore };
}

const contentOf = (json: string): string => JSON.parse(json).content;

describe("the memory engine's message store", () => {
  it("sweeps what is older than the retention from history, inboxes and queues", async () => {
    let clock = 1_000_000;
    const { store } = memoryStore({ messageTtlMs: 10_000, maxEntries: 100 }, () => clock);
    for (const content of ["old-1", "old-2"])
      await store.append(appendInput("alice", "bob", content));
    clock += 6_000;
    await store.append(appendInput("alice", "bob", "new-1"));
    await store.append(appendInput("carol", "bob", "new-2"));
    clock += 4_500; // the first two are 10.5 s old, the others 4.5 s
    store.sweep();

    const history = await store.history("alice", "bob", 10);
    expect(history.messages.map(contentOf)).toEqual(["new-1"]);
    const inbox = await store.readInbox("bob", 0, 10);
    expect(inbox.oldest).toBe(3);
    expect(inbox.entries.map((e) => [e.position, contentOf(e.messageJson)])).toEqual([
      [3, "new-1"],
      [4, "new-2"],
    ]);
    expect((await takeAllQueued(store, "bob")).map((e) => contentOf(e.messageJson))).toEqual([
      "new-1",
      "new-2",
    ]);
    // Acks over swept positions deliver receipts only for what is still kept.
    await store.acknowledge("bob", 4);
    expect(await store.receipts("alice")).toEqual([
      JSON.stringify({ type: "receipt", kind: "delivered", from: "bob", upTo: 3 }),
    ]);

    clock += 10_000;
    store.sweep();
    expect((await store.history("alice", "bob", 10)).messages).toEqual([]);
    expect(await store.readInbox("bob", 0, 10)).toEqual({ entries: [], oldest: 5, newest: 4 });
    expect(await store.conversations("bob", 10)).toEqual([]);
  });

  it("reads a page of conversations without visiting every peer", async () => {
    const { store } = memoryStore({ messageTtlMs: 60_000, maxEntries: 100 }, Date.now);
    for (let i = 0; i < 5000; i++) await store.append(appendInput("hub", `peer-${i}`, `m${i}`));
    await store.append(appendInput("peer-10", "hub", "back on top"));
    // Counts the steps of every Map iteration during one call: sorting all peers (as before)
    // iterated the user's 5,000; a recency list reads the first `limit`.
    const iterate = Map.prototype[Symbol.iterator];
    let steps = 0;
    const counting = function (this: Map<unknown, unknown>) {
      const inner = iterate.call(this);
      return {
        next: () => {
          steps++;
          return inner.next();
        },
        [Symbol.iterator]() {
          return this;
        },
      };
    };
    Map.prototype[Symbol.iterator] = counting as typeof iterate;
    Map.prototype.entries = counting as typeof iterate;
    let page: Awaited<ReturnType<typeof store.conversations>>;
    try {
      page = await store.conversations("hub", 3);
    } finally {
      Map.prototype[Symbol.iterator] = iterate;
      Map.prototype.entries = iterate;
    }
    expect(steps).toBeLessThan(10);
    expect(page.map((c) => [c.with, contentOf(c.lastMessageJson), c.unread])).toEqual([
      ["peer-10", "back on top", 1],
      ["peer-4999", "m4999", 0],
      ["peer-4998", "m4998", 0],
    ]);

    // Conversations whose messages all expired leave the list when met, and come back with a
    // new message.
    let clock = 1_000_000;
    const { store: expiring } = memoryStore({ messageTtlMs: 10_000, maxEntries: 100 }, () => clock);
    await expiring.append(appendInput("alice", "bob", "old"));
    clock += 6_000;
    await expiring.append(appendInput("carol", "alice", "new"));
    clock += 5_000;
    expiring.sweep();
    expect((await expiring.conversations("alice", 10)).map((c) => c.with)).toEqual(["carol"]);
    await expiring.append(appendInput("bob", "alice", "again"));
    expect((await expiring.conversations("alice", 10)).map((c) => c.with)).toEqual([
      "bob",
      "carol",
    ]);
  });

  it("keeps stored messages off the V8 heap", async () => {
    setFlagsFromString("--expose-gc");
    const gc = runInNewContext("gc") as () => void;
    const { store } = memoryStore({ messageTtlMs: 60_000, maxEntries: 1_000_000 }, Date.now);
    const content = "x".repeat(64);
    const send = (i: number) =>
      store.append({
        id: `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`,
        from: `user-${i % 20}`,
        to: `user-${(i + 1) % 20}`,
        content,
        timestamp: new Date(1_800_000_000_000 + i).toISOString(),
        senderConnId: "c1",
      });
    for (let i = 0; i < 1000; i++) await send(i);
    gc();
    const before = process.memoryUsage().heapUsed;
    for (let i = 1000; i < 101_000; i++) await send(i);
    gc();
    const grown = process.memoryUsage().heapUsed - before;
    // As objects and strings (before PackedLog), these 100,000 messages took about 120 MB of heap.
    expect(grown).toBeLessThan(5 * 1024 * 1024);
    const history = await store.history("user-3", "user-4", 2);
    expect(history.messages.map(contentOf)).toEqual([content, content]);
  });
});
