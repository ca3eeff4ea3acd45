import { createMemoryEngine } from "@mrezhen/engine";
import { pino } from "pino";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import type { Transport } from "../../src/chat/ports.js";
import { ChatService } from "../../src/chat/service.js";
import { type PresenceMode, Session } from "../../src/chat/session.js";

/** The Hub's own logic, on fake timers: windows, merging, final state, timers and close. */

class FakeTransport implements Transport {
  readonly frames: { type: string; [key: string]: unknown }[] = [];
  bufferedAmount = 0;
  send(frame: string): void {
    this.frames.push(JSON.parse(frame));
  }
  close(): void {}
  terminate(): void {}
  pause(): void {}
  resume(): void {}
  whenReceived(): Promise<boolean> {
    return Promise.resolve(true);
  }
  /** Presence frames about `userId`. */
  about(userId: string) {
    return this.frames.filter((f) => f.type === "presence" && f["userId"] === userId);
  }
}

const log = pino({ level: "silent" });
const WINDOW = 1000;
let connections = 0;

function setup() {
  const engine = createMemoryEngine({ rateLimit: { limit: 1000, windowMs: 60_000 } });
  const chat = new ChatService({
    engine,
    log,
    rateLimit: { limit: 1000, windowMs: 60_000 },
    presenceCoalesceMs: WINDOW,
  });
  const open = async (userId: string, presence: PresenceMode) => {
    const transport = new FakeTransport();
    const session = new Session(
      `c${++connections}`,
      userId,
      undefined,
      Number.MAX_SAFE_INTEGER,
      undefined,
      presence,
      transport,
      log,
    );
    await chat.open(session);
    return { session, transport };
  };
  /** One connect and disconnect of `userId`, the way a node registers them. */
  const flap = async () => {
    await engine.presence.connect("alice");
    await engine.presence.disconnect("alice");
  };
  return { engine, chat, open, flap };
}

describe("Hub presence coalescing", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("announces a flapping user's first change at once, then at most one per window, ending on the real state", async () => {
    const { engine, chat, open, flap } = setup();
    const engineTimers = vi.getTimerCount();
    const bob = await open("bob", "all");
    bob.transport.frames.length = 0;

    for (let i = 0; i < 20; i++) await flap();
    // The first change went out at once, with the list as it stood then.
    expect(bob.transport.about("alice")).toEqual([
      { type: "presence", userId: "alice", status: "online", onlineUsers: ["bob", "alice"] },
    ]);
    // Registration itself is never delayed: alice is offline in the engine now.
    expect(await engine.presence.onlineUsers()).toEqual(["bob"]);

    await vi.advanceTimersByTimeAsync(WINDOW - 1);
    expect(bob.transport.about("alice")).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(WINDOW / 4 + 1);
    // The window ended: alice's state then (offline) differs from the announced one.
    expect(bob.transport.about("alice")).toEqual([
      { type: "presence", userId: "alice", status: "online", onlineUsers: ["bob", "alice"] },
      { type: "presence", userId: "alice", status: "offline", onlineUsers: ["bob"] },
    ]);
    await vi.advanceTimersByTimeAsync(5 * WINDOW);
    expect(bob.transport.about("alice")).toHaveLength(2);
    expect(vi.getTimerCount()).toBe(engineTimers); // the wheel stops when no window is open
    chat.hub.close();
    await engine.close();
  });

  it("says nothing at a window's end when the user is back in the announced state", async () => {
    const { engine, chat, open, flap } = setup();
    const bob = await open("bob", "all");
    for (let i = 0; i < 5; i++) await flap();
    await engine.presence.connect("alice"); // online again, as announced
    await vi.advanceTimersByTimeAsync(3 * WINDOW);
    expect(bob.transport.about("alice").map((f) => f["status"])).toEqual(["online"]);
    chat.hub.close();
    await engine.close();
  });

  it("keeps announcing a user who flaps for a long time at most once per window", async () => {
    const { engine, chat, open } = setup();
    const bob = await open("bob", "all");
    const spanMs = 10 * WINDOW;
    for (let at = 0; at < spanMs; at += 50) {
      if (at % 100 === 0) await engine.presence.connect("alice");
      else await engine.presence.disconnect("alice");
      await vi.advanceTimersByTimeAsync(50);
    }
    await vi.advanceTimersByTimeAsync(2 * WINDOW);
    const frames = bob.transport.about("alice");
    // 200 changes; one frame at most per window (windows last 1 to 1.25 s), plus the first.
    expect(frames.length).toBeLessThanOrEqual(spanMs / WINDOW + 1);
    expect(frames.length).toBeGreaterThanOrEqual(2);
    expect(frames.at(-1)).toMatchObject({ status: "offline", onlineUsers: ["bob"] });
    // Consecutive frames never repeat a state.
    for (let i = 1; i < frames.length; i++)
      expect(frames[i]?.["status"]).not.toBe(frames[i - 1]?.["status"]);
    chat.hub.close();
    await engine.close();
  });

  it("gives presence=contacts sessions deltas without a list, for their contacts only, coalesced alike", async () => {
    const { engine, chat, open, flap } = setup();
    await engine.messages.append({
      id: "m1",
      from: "carol",
      to: "alice",
      content: "hi",
      timestamp: new Date(0).toISOString(),
      senderConnId: "x",
    });
    const carol = await open("carol", "contacts");
    const dave = await open("dave", "contacts"); // no conversation with alice
    for (let i = 0; i < 20; i++) await flap();
    await vi.advanceTimersByTimeAsync(3 * WINDOW);
    expect(carol.transport.about("alice")).toEqual([
      { type: "presence", userId: "alice", status: "online" },
      { type: "presence", userId: "alice", status: "offline" },
    ]);
    expect(dave.transport.frames.filter((f) => f.type === "presence")).toEqual([]);
    chat.hub.close();
    await engine.close();
  });

  it("stops its timer on close, idempotently, and announces at once after it", async () => {
    const { engine, chat, open, flap } = setup();
    const engineTimers = vi.getTimerCount();
    const bob = await open("bob", "all");
    await flap();
    expect(vi.getTimerCount()).toBe(engineTimers + 1); // one wheel for bob's and alice's windows
    chat.hub.close();
    chat.hub.close();
    expect(vi.getTimerCount()).toBe(engineTimers);
    await flap();
    expect(bob.transport.about("alice").map((f) => f["status"])).toEqual([
      "online",
      "online",
      "offline",
    ]);
    await engine.close();
  });
});
