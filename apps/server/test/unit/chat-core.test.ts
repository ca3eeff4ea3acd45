import { createMemoryEngine, type Engine, type QueuedMessage } from "@mrezhen/engine";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import type { Transport } from "../../src/chat/ports.js";
import { BACKLOG_PAUSE_AT, ChatService, INVALID_FRAME_LIMIT } from "../../src/chat/service.js";
import { Session } from "../../src/chat/session.js";

/** A transport that records what the core does to it. */
class FakeTransport implements Transport {
  readonly frames: { type: string; [key: string]: unknown }[] = [];
  closedWith: number | undefined;
  pauses = 0;
  resumes = 0;
  bufferedAmount = 0;
  send(frame: string): void {
    this.frames.push(JSON.parse(frame));
  }
  close(code: number): void {
    this.closedWith ??= code;
  }
  terminate(): void {
    this.closedWith ??= 1006;
  }
  pause(): void {
    this.pauses++;
  }
  resume(): void {
    this.resumes++;
  }
  /** The client confirms every page at once, until the connection is closed. */
  whenReceived(): Promise<boolean> {
    return Promise.resolve(this.closedWith === undefined);
  }
  ofType(type: string) {
    return this.frames.filter((f) => f.type === type);
  }
}

const log = pino({ level: "silent" });
let connections = 0;

function setup(options: { engine?: Engine; now?: () => number } = {}) {
  const engine =
    options.engine ?? createMemoryEngine({ rateLimit: { limit: 1000, windowMs: 60_000 } });
  const chat = new ChatService({
    engine,
    log,
    rateLimit: { limit: 1000, windowMs: 60_000 },
    ...(options.now ? { now: options.now } : {}),
  });
  const session = (userId: string, expiresAt = Number.MAX_SAFE_INTEGER, since?: number) => {
    const transport = new FakeTransport();
    return {
      transport,
      session: new Session(
        `c${++connections}`,
        userId,
        undefined,
        expiresAt,
        since,
        "all",
        transport,
        log,
      ),
    };
  };
  return { engine, chat, session };
}

/** A promise with its resolve handle, to hold an engine call open. */
function gate<T>() {
  let open!: (value: T) => void;
  const promise = new Promise<T>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

const flush = () => new Promise((resolve) => setImmediate(resolve));

describe("ChatService", () => {
  it("holds live messages back until the offline queue is flushed, and never sends one twice", async () => {
    const { engine, chat, session } = setup();
    const alice = session("alice");
    await chat.open(alice.session);
    chat.handleFrame(
      alice.session,
      JSON.stringify({ type: "direct_message", to: "bob", content: "queued" }),
    );
    await flush();

    // Hold bob's queue read open while a live message arrives.
    const readQueued = engine.messages.readQueued.bind(engine.messages);
    const held = gate<void>();
    engine.messages.readQueued = async (...args) => {
      const queued: QueuedMessage[] = await readQueued(...args);
      await held.promise;
      return queued;
    };
    const bob = session("bob");
    const opening = chat.open(bob.session);
    await flush();
    chat.handleFrame(
      alice.session,
      JSON.stringify({ type: "direct_message", to: "bob", content: "live" }),
    );
    await flush();
    expect(bob.transport.ofType("direct_message")).toHaveLength(0);

    held.open();
    await opening;
    const delivered = bob.transport.ofType("direct_message");
    expect(
      delivered.map((f) => [(f["message"] as { content: string }).content, f["queued"] ?? false]),
    ).toEqual([
      ["queued", true],
      ["live", false],
    ]);
  });

  it("handles a connection's frames in order, pausing the transport while a backlog builds up", async () => {
    const { engine, chat, session } = setup();
    const alice = session("alice");
    await chat.open(alice.session);
    const held = gate<void>();
    // An engine that stores asynchronously (as Redis does): no synchronous answer.
    const messages = engine.messages;
    const append = messages.appendIfAllowed.bind(messages);
    Object.defineProperty(messages, "appendIfAllowedNow", { value: undefined });
    messages.appendIfAllowed = async (input) => {
      await held.promise;
      return append(input);
    };
    const total = BACKLOG_PAUSE_AT + 5;
    for (let i = 0; i < total; i++) {
      chat.handleFrame(
        alice.session,
        JSON.stringify({ type: "direct_message", to: "bob", content: `m${i}` }),
      );
    }
    await flush();
    expect(alice.transport.pauses).toBe(1);
    expect(alice.transport.ofType("message_ack")).toHaveLength(0);

    held.open();
    for (let i = 0; i < 50 && alice.transport.ofType("message_ack").length < total; i++)
      await flush();
    const acks = alice.transport.ofType("message_ack");
    expect(acks.map((a) => a["seq"])).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    expect(alice.transport.resumes).toBe(1);
    expect(await chat.whenIdle()).toBeUndefined();
  });

  it(`closes with 1008 after ${INVALID_FRAME_LIMIT} invalid frames in a window, answering each one`, async () => {
    let now = 1_000_000;
    const { chat, session } = setup({ now: () => now });
    const mallory = session("mallory");
    await chat.open(mallory.session);
    for (let i = 0; i < INVALID_FRAME_LIMIT; i++) chat.handleFrame(mallory.session, "nope");
    expect(mallory.transport.closedWith).toBeUndefined();
    // A new window forgives the past.
    now += 11_000;
    for (let i = 0; i < INVALID_FRAME_LIMIT; i++) chat.handleFrame(mallory.session, "nope");
    expect(mallory.transport.closedWith).toBeUndefined();
    chat.handleFrame(mallory.session, "nope");
    expect(mallory.transport.closedWith).toBe(1008);
    expect(mallory.transport.ofType("error")).toHaveLength(2 * INVALID_FRAME_LIMIT + 1);
  });

  it("closes connections whose token expired with UNAUTHORIZED and 4001, and only those", async () => {
    let now = 1_000;
    const { chat, session } = setup({ now: () => now });
    const early = session("alice", 5_000);
    const late = session("bob", 50_000);
    await chat.open(early.session);
    await chat.open(late.session);
    chat.expireTokens();
    expect(early.transport.closedWith).toBeUndefined();
    now = 5_000;
    chat.expireTokens();
    expect(early.transport.ofType("error")[0]).toMatchObject({ code: "UNAUTHORIZED" });
    expect(early.transport.closedWith).toBe(4001);
    expect(late.transport.closedWith).toBeUndefined();
  });

  it("unregisters presence when a connection closes while it is still opening", async () => {
    const { engine, chat, session } = setup();
    const readQueued = engine.messages.readQueued.bind(engine.messages);
    const held = gate<void>();
    engine.messages.readQueued = async (...args) => {
      await held.promise;
      return readQueued(...args);
    };
    const bob = session("bob");
    const opening = chat.open(bob.session);
    await flush();
    expect(await engine.presence.onlineUsers()).toEqual(["bob"]);
    const closing = chat.closed(bob.session, 1006);
    held.open();
    await opening;
    await closing;
    expect(await engine.presence.onlineUsers()).toEqual([]);
    expect(chat.hub.connections).toBe(0);
  });
});

describe("Hub", () => {
  it("retries the broker subscription for the next connection after one failed", async () => {
    const { engine, chat, session } = setup();
    const subscribe = engine.broker.subscribe.bind(engine.broker);
    let failures = 1;
    engine.broker.subscribe = async (userId) => {
      if (failures-- > 0) throw new Error("redis blip");
      return subscribe(userId);
    };
    const first = session("bob");
    await chat.open(first.session);
    expect(first.transport.closedWith).toBe(1013);

    // The failed connection has not finished closing when the next one arrives.
    const second = session("bob");
    await chat.open(second.session);
    expect(second.transport.closedWith).toBeUndefined();
    expect(await engine.presence.onlineUsers()).toEqual(["bob"]);
    await chat.closed(first.session, 1013);
    expect(chat.hub.connections).toBe(1);
  });
});
