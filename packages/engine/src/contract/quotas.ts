import { randomUUID } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import {
  type AppendResult,
  DAY_MS,
  type Engine,
  type QuotaOptions,
  type RateRefusal,
} from "../ports.js";
import { appendInput, type BackendFactory, type ContractBackend, sleep } from "./harness.js";

const RATE = { limit: 100_000, windowMs: 60_000 };
const UNLIMITED = Number.MAX_SAFE_INTEGER;

const isRefusal = (r: AppendResult | RateRefusal): r is RateRefusal => "refused" in r;

/** The per-sender daily quotas of appendIfAllowed, counted in the same atomic step as the store. */
export function quotaContract(factory: BackendFactory): void {
  describe("MessageStore: daily quotas", () => {
    let backend: ContractBackend;
    afterEach(async () => backend?.close());

    async function setup(
      quotas: Partial<QuotaOptions>,
      rateLimit = RATE,
    ): Promise<{ engine: Engine }> {
      backend = await factory({
        rateLimit,
        quotas: { newConversationsPerDay: UNLIMITED, bytesPerDay: UNLIMITED, ...quotas },
      });
      return { engine: await backend.node() };
    }

    it("refuses a sender's new conversations past the quota, until the next UTC midnight", async () => {
      const { engine } = await setup({ newConversationsPerDay: 2 });
      const send = (from: string, to: string, content = "hi") =>
        engine.messages.appendIfAllowed(appendInput(from, to, content));
      expect(isRefusal(await send("alice", "bob"))).toBe(false);
      expect(isRefusal(await send("alice", "carol"))).toBe(false);
      const refused = await send("alice", "dave");
      expect(refused).toMatchObject({ refused: true, limit: "new_conversations_per_day" });
      const retryAfterMs = (refused as RateRefusal).retryAfterMs;
      expect(retryAfterMs).toBeGreaterThan(0);
      expect(retryAfterMs).toBeLessThanOrEqual(DAY_MS);
      // Roughly the time to midnight UTC (the engine's clock may be Redis'; allow some skew).
      expect(Math.abs(retryAfterMs - (DAY_MS - (Date.now() % DAY_MS)))).toBeLessThan(5_000);

      // The refused message left no trace.
      expect(await engine.messages.history("alice", "dave", 10)).toEqual({
        messages: [],
        hasMore: false,
      });
      expect((await engine.messages.readInbox("dave", 0, 10)).newest).toBe(0);
      expect((await engine.messages.readInbox("alice", 0, 10)).newest).toBe(2);
      expect((await engine.messages.conversations("alice", 10)).map((c) => c.with)).toEqual([
        "carol",
        "bob",
      ]);

      // Known peers are not new conversations; nor is a reply to someone who wrote first.
      expect(isRefusal(await send("alice", "bob"))).toBe(false);
      expect(isRefusal(await send("erin", "alice"))).toBe(false);
      expect(isRefusal(await send("alice", "erin"))).toBe(false);
      // Others have their own quota, and dave's first conversation is with alice.
      expect(isRefusal(await send("dave", "alice"))).toBe(false);
      // Now that the pair has a seq, alice may write to dave.
      expect(isRefusal(await send("alice", "dave"))).toBe(false);
      const seqs = (await engine.messages.history("alice", "dave", 10)).messages.map(
        (m) => (JSON.parse(m) as { seq: number }).seq,
      );
      expect(seqs).toEqual([1, 2]);
      // Plain append (no limits) is not behind the quotas.
      expect((await engine.messages.append(appendInput("alice", "frank"))).duplicate).toBe(false);
    });

    it("counts the UTF-8 bytes of the stored texts of a sender per day", async () => {
      const { engine } = await setup({ bytesPerDay: 2000 });
      const first = await engine.messages.appendIfAllowed(
        appendInput("alice", "bob", "ж".repeat(400)),
      );
      expect(isRefusal(first)).toBe(false);
      const [stored] = (await engine.messages.history("alice", "bob", 1)).messages;
      const firstBytes = Buffer.byteLength(stored ?? "");
      expect(firstBytes).toBeGreaterThan(800); // 2 bytes per "ж": bytes, not characters
      // 1,000 more bytes would not fit: refused, whatever the recipient.
      const second = await engine.messages.appendIfAllowed(
        appendInput("alice", "carol", "x".repeat(1000)),
      );
      expect(second).toMatchObject({ refused: true, limit: "bytes_per_day" });
      expect((second as RateRefusal).retryAfterMs).toBeLessThanOrEqual(DAY_MS);
      expect((await engine.messages.readInbox("carol", 0, 10)).newest).toBe(0);
      // A smaller one still fits: exactly up to the quota, by the stored text's size.
      const room = 2000 - firstBytes;
      const fixed = Buffer.byteLength((stored ?? "").replace(/"content":"ж+"/, '"content":""'));
      const fits = appendInput("alice", "bob", "y".repeat(room - fixed));
      expect(isRefusal(await engine.messages.appendIfAllowed(fits))).toBe(false);
      const over = appendInput("alice", "bob", "y");
      expect(await engine.messages.appendIfAllowed(over)).toMatchObject({
        limit: "bytes_per_day",
      });
      expect((await engine.messages.history("alice", "bob", 10)).messages).toHaveLength(2);
    });

    it("answers a retried clientMsgId without counting it, even over the quota", async () => {
      const { engine } = await setup({ newConversationsPerDay: 1 });
      const input = appendInput("alice", "bob", "once", { clientMsgId: "c-1" });
      const first = await engine.messages.appendIfAllowed(input);
      expect(isRefusal(first)).toBe(false);
      expect(await engine.messages.appendIfAllowed({ ...input, id: randomUUID() })).toEqual({
        ...first,
        duplicate: true,
      });
      expect(
        await engine.messages.appendIfAllowed(
          appendInput("alice", "carol", "new", { clientMsgId: "c-2" }),
        ),
      ).toMatchObject({ limit: "new_conversations_per_day" });
      // The refused key was not recorded: once allowed, it is stored (here: to a known peer).
      const retried = await engine.messages.appendIfAllowed(
        appendInput("alice", "bob", "new", { clientMsgId: "c-2" }),
      );
      expect(retried).toMatchObject({ duplicate: false, seq: 2 });
    });

    it("counts neither the rate window for a quota refusal nor the quota for a rate refusal", async () => {
      const { engine } = await setup({ newConversationsPerDay: 2 }, { limit: 2, windowMs: 400 });
      const send = (to: string) => engine.messages.appendIfAllowed(appendInput("alice", to));
      expect(isRefusal(await send("bob"))).toBe(false); // conversation 1, action 1
      expect(isRefusal(await send("bob"))).toBe(false); // action 2: the window is full
      expect(await send("carol")).toMatchObject({ limit: "rate" });
      await sleep(450);
      // The rate refusal did not count carol as a new conversation: she still fits.
      expect(isRefusal(await send("carol"))).toBe(false); // conversation 2
      expect(await send("dave")).toMatchObject({ limit: "new_conversations_per_day" });
      // And that quota refusal did not take the window's last slot.
      expect(isRefusal(await send("bob"))).toBe(false);
      expect(await send("bob")).toMatchObject({ limit: "rate" });
    });

    it("allows exactly the quota of concurrent new conversations, from any node", async () => {
      const { engine } = await setup({ newConversationsPerDay: 3 });
      const nodes: Engine[] = [engine];
      if (backend.maxNodes > 1) nodes.push(await backend.node());
      const results = await Promise.all(
        Array.from({ length: 12 }, (_, i) =>
          (nodes[i % nodes.length] as Engine).messages.appendIfAllowed(
            appendInput("alice", `target-${i}`),
          ),
        ),
      );
      expect(results.filter((r) => !isRefusal(r))).toHaveLength(3);
      expect((await engine.messages.conversations("alice", 100)).length).toBe(3);
      expect((await engine.messages.readInbox("alice", 0, 100)).newest).toBe(3);
    });
  });
}
