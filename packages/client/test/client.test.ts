import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  type Ack,
  BACKOFF_MAX_MS,
  backoffDelay,
  type ChatMessage,
  type ClientError,
  type ConnectionState,
  MrezhenClient,
  memoryStorage,
  type WebSocketLike,
} from "../src/index.js";

/**
 * A scripted WebSocket: the test opens it, feeds it frames and drops it; what the client sent is
 * in `sent`. Like a browser's, close() reports the close event later, not inside the call.
 */
class FakeSocket implements WebSocketLike {
  static all: FakeSocket[] = [];
  readyState = 0;
  onopen: ((event: unknown) => void) | null = null;
  onmessage: ((event: { data: unknown }) => void) | null = null;
  onclose: ((event: { code: number; reason: string }) => void) | null = null;
  onerror: ((event: unknown) => void) | null = null;
  readonly sent: Record<string, unknown>[] = [];
  constructor(readonly url: string) {
    FakeSocket.all.push(this);
  }
  static get last(): FakeSocket {
    const socket = FakeSocket.all.at(-1);
    if (socket === undefined) throw new Error("no socket yet");
    return socket;
  }
  send(data: string): void {
    this.sent.push(JSON.parse(data) as Record<string, unknown>);
  }
  close(code = 1000, reason = ""): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    setTimeout(() => this.onclose?.({ code, reason }), 0);
  }
  open(): void {
    this.readyState = 1;
    this.onopen?.({});
  }
  receive(frame: object): void {
    this.onmessage?.({ data: JSON.stringify(frame) });
  }
  drop(code = 1006, reason = ""): void {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  sentOf(type: string): Record<string, unknown>[] {
    return this.sent.filter((frame) => frame["type"] === type);
  }
}

function makeClient(options: Partial<ConstructorParameters<typeof MrezhenClient>[0]> = {}) {
  let tokens = 0;
  const getToken = vi.fn(() => `token-${++tokens}`);
  const client = new MrezhenClient({
    url: "ws://node/ws",
    getToken,
    WebSocket: FakeSocket,
    ...options,
  });
  const states: ConnectionState[] = [];
  const errors: ClientError[] = [];
  const messages: ChatMessage[] = [];
  client.on("state", (state) => states.push(state));
  client.on("error", (error) => errors.push(error));
  client.on("message", (message) => messages.push(message));
  return { client, getToken, states, errors, messages };
}

/** Lets the connect's promise chain (storage load, getToken) run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await Promise.resolve();
}

async function connected(client: MrezhenClient): Promise<FakeSocket> {
  await client.connect();
  await settle();
  const socket = FakeSocket.last;
  socket.open();
  return socket;
}

function message(id: string, position: number, from = "bob"): object {
  return {
    type: "direct_message",
    message: {
      id,
      from,
      to: "alice",
      content: `m${id}`,
      timestamp: "2026-01-01T00:00:00.000Z",
      seq: position,
    },
    position,
  };
}

function ackFor(frame: Record<string, unknown>, position = 1): object {
  return {
    type: "message_ack",
    messageId: `id-${String(frame["clientMsgId"])}`,
    to: frame["to"],
    timestamp: "2026-01-01T00:00:00.000Z",
    status: "delivered",
    seq: position,
    position,
    clientMsgId: frame["clientMsgId"],
  };
}

beforeEach(() => {
  vi.useFakeTimers();
  FakeSocket.all = [];
});
afterEach(() => {
  vi.useRealTimers();
});

describe("backoff", () => {
  it("is full jitter between 0 and min(20 s, 0.5 s × 2^attempt)", () => {
    for (let attempt = 0; attempt < 12; attempt++) {
      const cap = Math.min(BACKOFF_MAX_MS, 500 * 2 ** attempt);
      expect(backoffDelay(attempt, () => 0)).toBe(0);
      expect(backoffDelay(attempt, () => 0.999_999)).toBe(cap - 1);
      const delay = backoffDelay(attempt);
      expect(delay).toBeGreaterThanOrEqual(0);
      expect(delay).toBeLessThan(cap);
    }
    expect(backoffDelay(1000, () => 0.5)).toBe(10_000);
  });

  it("reconnects with growing delays while the node is down, and resets once synced", async () => {
    const random = vi.spyOn(Math, "random").mockReturnValue(0.999);
    const { client, getToken } = makeClient();
    await client.connect();
    await settle();
    const delays: number[] = [];
    for (let i = 0; i < 8; i++) {
      const before = FakeSocket.all.length;
      FakeSocket.last.drop(1006);
      const started = Date.now();
      while (FakeSocket.all.length === before) {
        await vi.advanceTimersByTimeAsync(50);
      }
      delays.push(Date.now() - started);
    }
    // Caps 500, 1000, 2000, ... 20 000 (rounded up to the 50 ms step of the loop).
    expect(delays).toEqual([500, 1000, 2000, 4000, 8000, 16_000, 20_000, 20_000]);
    expect(getToken).toHaveBeenCalledTimes(9);
    FakeSocket.last.open();
    FakeSocket.last.receive({ type: "synced", position: 0 });
    FakeSocket.last.drop(1006);
    await vi.advanceTimersByTimeAsync(500);
    expect(FakeSocket.all).toHaveLength(10);
    random.mockRestore();
    client.close();
  });
});

describe("outbox", () => {
  it("keeps a send until its ack and resends it with the same clientMsgId after a reconnect", async () => {
    const { client } = makeClient();
    const outbox: number[] = [];
    client.on("outbox", (entries) => outbox.push(entries.length));
    const sending = client.sendMessage({ to: "bob", content: "hello" });
    expect(client.pending()).toMatchObject([{ to: "bob", content: "hello" }]);

    const first = await connected(client);
    const [frame] = first.sentOf("direct_message");
    expect(frame).toMatchObject({ to: "bob", content: "hello" });
    expect(frame?.["clientMsgId"]).toMatch(/^[0-9a-f-]{36}$/);

    first.drop(1006);
    await vi.advanceTimersByTimeAsync(500);
    const second = FakeSocket.last;
    expect(second).not.toBe(first);
    second.open();
    const [resent] = second.sentOf("direct_message");
    expect(resent).toEqual(frame);

    const acks: Ack[] = [];
    client.on("ack", (ack) => acks.push(ack));
    second.receive(ackFor(resent as Record<string, unknown>));
    await expect(sending).resolves.toMatchObject({ status: "delivered", seq: 1 });
    expect(acks).toHaveLength(1);
    expect(client.pending()).toEqual([]);
    expect(outbox.at(-1)).toBe(0);
    // The same ack again (a retry's answer) changes nothing.
    second.receive(ackFor(resent as Record<string, unknown>));
    expect(acks).toHaveLength(1);
    client.close();
  });

  it("rejects and drops a send the server refuses for good, keeps the next one", async () => {
    const { client, errors } = makeClient();
    const socket = await connected(client);
    const tooLong = client.sendMessage({ to: "bob", content: "x".repeat(6000) });
    const fine = client.sendMessage({ to: "bob", content: "fine" });
    const [, second] = socket.sentOf("direct_message");
    // Validation errors carry no clientMsgId: answers come in order, so it is the oldest send's.
    socket.receive({ type: "error", code: "CONTENT_TOO_LONG", message: "too long" });
    await expect(tooLong).rejects.toMatchObject({ code: "CONTENT_TOO_LONG" });
    expect(errors.map((error) => error.code)).toEqual(["CONTENT_TOO_LONG"]);
    expect(client.pending().map((entry) => entry.content)).toEqual(["fine"]);
    socket.receive(ackFor(second as Record<string, unknown>));
    await expect(fine).resolves.toMatchObject({ status: "delivered" });

    const self = client.sendMessage({ to: "alice", content: "me" });
    socket.receive({ type: "error", code: "SELF_MESSAGE", message: "self" });
    await expect(self).rejects.toMatchObject({ code: "SELF_MESSAGE" });
    expect(client.pending()).toEqual([]);
    client.close();
  });

  it("resends after outcome unknown or not_stored, with the same id, and keeps the order", async () => {
    const { client } = makeClient();
    const socket = await connected(client);
    const a = client.sendMessage({ to: "bob", content: "a" });
    client.sendMessage({ to: "bob", content: "b" });
    const [frameA, frameB] = socket.sentOf("direct_message") as [
      Record<string, unknown>,
      Record<string, unknown>,
    ];
    socket.receive({
      type: "error",
      code: "UNAVAILABLE",
      message: "lost track",
      outcome: "unknown",
      clientMsgId: frameA["clientMsgId"],
    });
    socket.receive({
      type: "error",
      code: "UNAVAILABLE",
      message: "not stored",
      outcome: "not_stored",
      clientMsgId: frameB["clientMsgId"],
    });
    expect(client.pending()).toHaveLength(2);
    // A send made meanwhile waits behind them.
    client.sendMessage({ to: "bob", content: "c" });
    expect(socket.sentOf("direct_message")).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(1000);
    const resent = socket.sentOf("direct_message").slice(2);
    expect(resent.map((frame) => frame["content"])).toEqual(["a", "b", "c"]);
    expect(resent[0]?.["clientMsgId"]).toBe(frameA["clientMsgId"]);
    expect(resent[1]?.["clientMsgId"]).toBe(frameB["clientMsgId"]);
    socket.receive(ackFor(frameA));
    await expect(a).resolves.toMatchObject({ clientMsgId: frameA["clientMsgId"] });
    client.close();
  });

  it("waits retryAfterMs after RATE_LIMITED, then resends", async () => {
    const { client } = makeClient();
    const socket = await connected(client);
    const sending = client.sendMessage({ to: "bob", content: "soon" });
    socket.receive({
      type: "error",
      code: "RATE_LIMITED",
      message: "slow down",
      limit: "messages",
      retryAfterMs: 3000,
    });
    await vi.advanceTimersByTimeAsync(2999);
    expect(socket.sentOf("direct_message")).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1);
    const frames = socket.sentOf("direct_message");
    expect(frames).toHaveLength(2);
    expect(frames[1]).toEqual(frames[0]);
    socket.receive(ackFor(frames[1] as Record<string, unknown>));
    await expect(sending).resolves.toBeDefined();
    client.close();
  });

  it("settles an unacked send when the replay shows it was stored", async () => {
    const { client, messages } = makeClient();
    const socket = await connected(client);
    const sending = client.sendMessage({ to: "bob", content: "stored" });
    const [frame] = socket.sentOf("direct_message") as [Record<string, unknown>];
    socket.receive({
      type: "direct_message",
      message: {
        id: "m1",
        from: "alice",
        to: "bob",
        content: "stored",
        timestamp: "2026-01-01T00:00:00.000Z",
        seq: 1,
        clientMsgId: frame["clientMsgId"],
      },
      position: 7,
    });
    await expect(sending).resolves.toMatchObject({ messageId: "m1", position: 7 });
    expect(messages).toEqual([]);
    expect(client.cursor).toBe(7);
    client.close();
  });
});

describe("cursor, acks and dedupe", () => {
  it("resumes with since, advances the cursor after the handler and acks in batches", async () => {
    const storage = memoryStorage();
    const { client } = makeClient({ storage, ackEvery: 3, ackDelayMs: 500 });
    const cursorsSeen: number[] = [];
    client.on("message", () => cursorsSeen.push(client.cursor));
    const socket = await connected(client);
    expect(socket.url).toBe("ws://node/ws?token=token-1&since=0");
    socket.receive(message("a", 1));
    socket.receive(message("b", 2));
    // The handler ran before the cursor moved: a crash inside it replays the message.
    expect(cursorsSeen).toEqual([0, 1]);
    expect(client.cursor).toBe(2);
    expect(await storage.get("mrezhen.cursor")).toBe("2");
    expect(socket.sentOf("ack")).toEqual([]);
    await vi.advanceTimersByTimeAsync(500);
    expect(socket.sentOf("ack")).toEqual([{ type: "ack", upTo: 2 }]);
    socket.receive(message("c", 3));
    socket.receive(message("d", 4));
    socket.receive(message("e", 5));
    expect(socket.sentOf("ack")).toEqual([
      { type: "ack", upTo: 2 },
      { type: "ack", upTo: 5 },
    ]);

    socket.drop(1006);
    await vi.advanceTimersByTimeAsync(500);
    expect(FakeSocket.last.url).toBe("ws://node/ws?token=token-2&since=5");
    client.close();
  });

  it("never emits a message twice: replay overlap, a repeated id, positions already processed", async () => {
    const { client, messages } = makeClient();
    const socket = await connected(client);
    socket.receive(message("a", 1));
    socket.receive(message("b", 2));
    socket.drop(1006);
    await vi.advanceTimersByTimeAsync(500);
    const again = FakeSocket.last;
    again.open();
    // The replay overlaps what arrived just before the drop.
    again.receive(message("a", 1));
    again.receive(message("b", 2));
    again.receive(message("c", 3));
    again.receive({ type: "synced", position: 3 });
    // The same message again, live (e.g. a copy from another path).
    again.receive(message("c", 3));
    again.receive(message("d", 4));
    expect(messages.map((m) => m.id)).toEqual(["a", "b", "c", "d"]);
    client.close();
  });

  it("keeps the set of recent ids bounded", async () => {
    const { client, messages } = makeClient();
    const socket = await connected(client);
    for (let i = 1; i <= 5000; i++) socket.receive(message(`m${i}`, i));
    expect(messages).toHaveLength(5000);
    const seen = (client as unknown as { seen: Set<string> }).seen;
    expect(seen.size).toBeLessThanOrEqual(2000);
    client.close();
  });

  it("moves the cursor back when the server reports a lower synced position", async () => {
    const { client } = makeClient();
    const socket = await connected(client);
    socket.receive(message("a", 10));
    socket.receive({ type: "synced", position: 4 });
    expect(client.cursor).toBe(4);
    client.close();
  });

  it("restores outbox and cursor from storage after a reload, and sends the outbox", async () => {
    const storage = memoryStorage();
    const first = makeClient({ storage }).client;
    const socket = await connected(first);
    socket.receive(message("a", 3));
    socket.drop(1006);
    first.close();
    first.sendMessage({ to: "bob", content: "written offline" });
    await settle();

    const { client } = makeClient({ storage });
    await client.connect();
    expect(client.pending().map((entry) => entry.content)).toEqual(["written offline"]);
    expect(client.cursor).toBe(3);
    await settle();
    FakeSocket.last.open();
    expect(FakeSocket.last.url).toContain("since=3");
    expect(FakeSocket.last.sentOf("direct_message")).toMatchObject([
      { content: "written offline" },
    ]);
    client.close();
  });
});

describe("reconnect", () => {
  it("retries at once (jittered) after 1012, and after 4001 with a fresh token", async () => {
    const { client, getToken, states } = makeClient();
    const socket = await connected(client);
    socket.receive({ type: "synced", position: 0 });
    socket.drop(1012, "draining");
    expect(states.at(-1)).toBe("reconnecting");
    await vi.advanceTimersByTimeAsync(500);
    expect(FakeSocket.all).toHaveLength(2);
    FakeSocket.last.open();
    FakeSocket.last.receive({ type: "error", code: "UNAUTHORIZED", message: "expired" });
    FakeSocket.last.drop(4001, "token expired");
    await vi.advanceTimersByTimeAsync(500);
    expect(FakeSocket.all).toHaveLength(3);
    expect(getToken).toHaveBeenCalledTimes(3);
    expect(FakeSocket.last.url).toContain(`token=token-3`);
    expect(states).toEqual(["connecting", "open", "reconnecting", "open", "reconnecting"]);
    client.close();
    expect(states.at(-1)).toBe("closed");
  });

  it.each([1003, 1008, 1009])("does not retry after %i, and tells the app", async (code) => {
    const { client, errors, states } = makeClient();
    const socket = await connected(client);
    socket.drop(code, "fix the client");
    await vi.advanceTimersByTimeAsync(60_000);
    expect(FakeSocket.all).toHaveLength(1);
    expect(states.at(-1)).toBe("closed");
    expect(errors).toMatchObject([{ code: "CLOSED", closeCode: code }]);
  });

  it("pings an idle link and reconnects when the pong does not come", async () => {
    const { client } = makeClient({ pingIntervalMs: 25_000, pongTimeoutMs: 10_000 });
    const socket = await connected(client);
    await vi.advanceTimersByTimeAsync(24_000);
    socket.receive({ type: "presence", userId: "bob", status: "online" });
    await vi.advanceTimersByTimeAsync(24_000);
    // A frame 24 s in made the link not idle: no ping yet.
    expect(socket.sentOf("ping")).toEqual([]);
    await vi.advanceTimersByTimeAsync(1000);
    expect(socket.sentOf("ping")).toHaveLength(1);
    socket.receive({ type: "pong", timestamp: "now" });
    await vi.advanceTimersByTimeAsync(25_000);
    expect(socket.sentOf("ping")).toHaveLength(2);
    // No pong this time: the link is dead; the client does not wait for a close that won't come.
    await vi.advanceTimersByTimeAsync(10_000);
    expect(socket.readyState).toBe(3);
    await vi.advanceTimersByTimeAsync(500);
    expect(FakeSocket.all).toHaveLength(2);
    client.close();
  });

  it("gives up on a connect that hangs", async () => {
    const { client } = makeClient({ pongTimeoutMs: 10_000 });
    await client.connect();
    await settle();
    await vi.advanceTimersByTimeAsync(10_000);
    expect(FakeSocket.all[0]?.readyState).toBe(3);
    await vi.advanceTimersByTimeAsync(500);
    expect(FakeSocket.all).toHaveLength(2);
    client.close();
  });

  it("refreshes the token in place on token_expiring", async () => {
    const { client, getToken } = makeClient();
    const socket = await connected(client);
    socket.receive({ type: "token_expiring", exp: 123 });
    await settle();
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(socket.sentOf("refresh")).toEqual([{ type: "refresh", token: "token-2" }]);
    socket.receive({ type: "refreshed", exp: 456 });
    expect(FakeSocket.all).toHaveLength(1);
    client.close();
  });
});

describe("requests", () => {
  it("answers history, conversations and online users, and fails them when offline", async () => {
    const { client } = makeClient();
    await expect(client.history("bob")).rejects.toMatchObject({ code: "OFFLINE" });
    const socket = await connected(client);
    const history = client.history("bob", { limit: 10 });
    const conversations = client.conversations();
    const online = client.onlineUsers(["bob"]);
    expect(socket.sent).toEqual([
      { type: "get_history", with: "bob", limit: 10 },
      { type: "get_conversations" },
      { type: "get_online_users", users: ["bob"] },
    ]);
    socket.receive({ type: "message_history", with: "bob", messages: [], hasMore: false });
    socket.receive({ type: "error", code: "RATE_LIMITED", message: "reads", limit: "reads" });
    socket.receive({ type: "online_users", users: ["bob"] });
    await expect(history).resolves.toMatchObject({ with: "bob", hasMore: false });
    await expect(conversations).rejects.toMatchObject({ code: "RATE_LIMITED" });
    await expect(online).resolves.toEqual(["bob"]);
    const lost = client.conversations();
    socket.drop(1006);
    await expect(lost).rejects.toMatchObject({ code: "DISCONNECTED" });
    client.close();
  });

  it("sends mark_read made offline on the next connect, and typing only when online", async () => {
    const { client } = makeClient();
    client.markRead("bob", 3);
    client.markRead("bob", 5);
    client.typing("bob", "start");
    const socket = await connected(client);
    expect(socket.sent).toEqual([{ type: "mark_read", with: "bob", upTo: 5 }]);
    client.typing("bob", "stop");
    expect(socket.sentOf("typing")).toEqual([{ type: "typing", to: "bob", state: "stop" }]);
    client.close();
  });
});
