import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import {
  type Ack,
  BACKOFF_MAX_MS,
  backoffDelay,
  type ChatMessage,
  type ClientError,
  type ConnectionState,
  type GroupAck,
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

    const acks: (Ack | GroupAck)[] = [];
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

describe("groups", () => {
  const T = "2026-01-01T00:00:00.000Z";
  const group = (groupId: string, createdBy = "alice", name = "Team") => ({
    groupId,
    name,
    members: ["alice", "bob", "carol"],
    admins: [createdBy],
    createdBy,
    createdAt: T,
  });
  const entry = (id: string, position: number, extra: object = { content: `g${id}` }) => ({
    type: "group_message",
    groupId: "g1",
    message: { id, groupId: "g1", from: "bob", timestamp: T, seq: position, ...extra },
    position,
  });
  const groupAckFor = (frame: Record<string, unknown>, seq = 1, position = seq) => ({
    type: "message_ack",
    messageId: `id-${String(frame["clientMsgId"])}`,
    groupId: frame["groupId"],
    timestamp: T,
    status: "queued",
    seq,
    position,
    clientMsgId: frame["clientMsgId"],
  });
  /** A JWT-shaped token for `sub`: the client reads its user id from it. */
  const jwtFor = (sub: string) =>
    `e30.${btoa(JSON.stringify({ sub })).replace(/=+$/, "").replace(/\+/g, "-").replace(/\//g, "_")}.sig`;

  it("sends through the outbox: kept until the group ack, resent with the same id after a drop, resolved with the ack", async () => {
    const { client } = makeClient();
    const outbox: number[] = [];
    client.on("outbox", (entries) => outbox.push(entries.length));
    const acks: (Ack | GroupAck)[] = [];
    client.on("ack", (ack) => acks.push(ack));
    const first = await connected(client);
    const sending = client.sendMessage({ groupId: "g1", content: "hello all" });
    const dm = client.sendMessage({ to: "bob", content: "psst" });
    expect(client.pending()).toMatchObject([
      { groupId: "g1", content: "hello all" },
      { to: "bob", content: "psst" },
    ]);
    expect(client.pending()[0]).not.toHaveProperty("to");
    const [frame] = first.sentOf("group_message") as [Record<string, unknown>];
    expect(frame).toEqual({
      type: "group_message",
      groupId: "g1",
      content: "hello all",
      clientMsgId: expect.any(String),
    });
    // Group and direct sends share one outbox, in one order.
    expect(first.sent.map((sent) => sent["type"])).toEqual(["group_message", "direct_message"]);

    first.drop(1006);
    await vi.advanceTimersByTimeAsync(500);
    const second = FakeSocket.last;
    second.open();
    expect(second.sentOf("group_message")).toEqual([frame]);
    second.receive(groupAckFor(frame, 4, 9));
    await expect(sending).resolves.toMatchObject({
      messageId: `id-${String(frame["clientMsgId"])}`,
      groupId: "g1",
      timestamp: T,
      status: "queued",
      seq: 4,
      position: 9,
      clientMsgId: frame["clientMsgId"],
    });
    expect(acks).toMatchObject([{ groupId: "g1", seq: 4 }]);
    expect(client.pending()).toMatchObject([{ to: "bob" }]);
    second.receive(ackFor(second.sentOf("direct_message")[0] as Record<string, unknown>, 2));
    await expect(dm).resolves.toMatchObject({ to: "bob", seq: 2 });
    expect(outbox.at(-1)).toBe(0);
    client.close();
  });

  it("rejects a send the server refuses (not a member), leaves the outbox, and keeps the sends behind it", async () => {
    const { client, errors } = makeClient();
    const socket = await connected(client);
    const refused = client.sendMessage({ groupId: "gone", content: "anyone?" });
    const next = client.sendMessage({ groupId: "g1", content: "next" });
    const [first, second] = socket.sentOf("group_message") as Record<string, unknown>[];
    socket.receive({
      type: "error",
      code: "FORBIDDEN",
      message: "You are not a member of this group.",
      clientMsgId: first?.["clientMsgId"],
    });
    await expect(refused).rejects.toMatchObject({
      name: "ClientError",
      code: "FORBIDDEN",
      message: "You are not a member of this group.",
    });
    expect(errors.map((error) => error.code)).toEqual(["FORBIDDEN"]);
    expect(client.pending()).toMatchObject([{ groupId: "g1", content: "next" }]);
    // A retryable refusal keeps it, and resends the same id after retryAfterMs.
    socket.receive({
      type: "error",
      code: "RATE_LIMITED",
      message: "slow down",
      limit: "messages",
      retryAfterMs: 1000,
    });
    await vi.advanceTimersByTimeAsync(999);
    expect(socket.sentOf("group_message")).toHaveLength(2);
    await vi.advanceTimersByTimeAsync(1);
    expect(socket.sentOf("group_message")).toHaveLength(3);
    expect(socket.sentOf("group_message")[2]).toEqual(second);
    socket.receive(groupAckFor(second as Record<string, unknown>));
    await expect(next).resolves.toMatchObject({ groupId: "g1" });
    client.close();
  });

  it("keeps a group send written offline across a reload, and sends it as a group message", async () => {
    const storage = memoryStorage();
    const first = makeClient({ storage }).client;
    await first.connect();
    first.close();
    void first.sendMessage({ groupId: "g1", content: "written offline" });
    await settle();

    const { client } = makeClient({ storage });
    await client.connect();
    expect(client.pending()).toMatchObject([{ groupId: "g1", content: "written offline" }]);
    await settle();
    FakeSocket.last.open();
    expect(FakeSocket.last.sent).toEqual([
      {
        type: "group_message",
        groupId: "g1",
        content: "written offline",
        clientMsgId: client.pending()[0]?.clientMsgId,
      },
    ]);
    client.close();
  });

  it("emits group entries as groupMessage, in inbox order with direct messages, once each, on one cursor", async () => {
    const { client, messages } = makeClient({ ackEvery: 100 });
    const order: string[] = [];
    client.on("message", (m) => order.push(`dm:${m.id}`));
    client.on("groupMessage", (m) => order.push(`group:${m.id}`));
    const socket = await connected(client);
    socket.receive(entry("e1", 1, { event: { kind: "created", name: "Team", members: ["bob"] } }));
    socket.receive(message("d2", 2));
    socket.receive(entry("g3", 3));
    // A replay overlapping what was seen, by position and by id: nothing twice.
    socket.receive(entry("g3", 3));
    socket.receive(entry("e1", 1, { event: { kind: "created", name: "Team", members: ["bob"] } }));
    socket.receive(entry("g4", 4));
    socket.receive(entry("new-id-old-position", 2));
    expect(order).toEqual(["group:e1", "dm:d2", "group:g3", "group:g4"]);
    expect(messages.map((m) => m.id)).toEqual(["d2"]);
    expect(client.cursor).toBe(4);
    await vi.advanceTimersByTimeAsync(500);
    expect(socket.sentOf("ack")).toEqual([{ type: "ack", upTo: 4 }]);
    client.close();
  });

  it("settles an unacked group send when the replay shows it stored, with a group ack", async () => {
    const { client } = makeClient();
    const groupMessages: unknown[] = [];
    client.on("groupMessage", (m) => groupMessages.push(m));
    const socket = await connected(client);
    const sending = client.sendMessage({ groupId: "g1", content: "stored" });
    const [frame] = socket.sentOf("group_message") as [Record<string, unknown>];
    socket.receive(
      entry("m1", 7, { from: "alice", content: "stored", clientMsgId: frame["clientMsgId"] }),
    );
    await expect(sending).resolves.toEqual({
      messageId: "m1",
      groupId: "g1",
      timestamp: T,
      status: "queued",
      seq: 7,
      position: 7,
      clientMsgId: frame["clientMsgId"],
    });
    expect(groupMessages).toEqual([]);
    expect(client.cursor).toBe(7);
    client.close();
  });

  it("answers group commands with their own group, not with a group frame that arrives unasked", async () => {
    const { client } = makeClient({ getToken: () => jwtFor("alice") });
    await expect(client.createGroup("Team", ["bob"])).rejects.toMatchObject({ code: "OFFLINE" });
    const news: string[] = [];
    client.on("group", (g) => news.push(`${g.groupId}:${g.name}`));
    const socket = await connected(client);
    const created = client.createGroup("Team", ["bob", "carol"]);
    const renamed = client.renameGroup("g2", "Renamed");
    const added = client.addMember("g2", "dave");
    const removed = client.removeMember("g2", "dave");
    const left = client.leaveGroup("g3");
    expect(socket.sent).toEqual([
      { type: "create_group", name: "Team", members: ["bob", "carol"] },
      { type: "rename_group", groupId: "g2", name: "Renamed" },
      { type: "add_member", groupId: "g2", userId: "dave" },
      { type: "remove_member", groupId: "g2", userId: "dave" },
      { type: "leave_group", groupId: "g3" },
    ]);
    // Before the answers: bob created a group with alice in it, and someone added her to g9.
    socket.receive({ type: "group", group: group("gb", "bob", "Bob's") });
    socket.receive({ type: "group", group: group("g9", "carol", "Added") });
    socket.receive({ type: "group", group: group("g1") });
    socket.receive({ type: "group", group: group("g2", "alice", "Renamed") });
    await expect(created).resolves.toMatchObject({ groupId: "g1", createdBy: "alice" });
    await expect(renamed).resolves.toMatchObject({ groupId: "g2", name: "Renamed" });
    socket.receive({ type: "group", group: group("g2", "alice", "Renamed") });
    await expect(added).resolves.toMatchObject({ groupId: "g2" });
    // An error that names no request goes to the oldest one waiting.
    socket.receive({ type: "error", code: "FORBIDDEN", message: "Only the creator may remove." });
    await expect(removed).rejects.toMatchObject({ code: "FORBIDDEN" });
    socket.receive({ type: "error", code: "NOT_FOUND", message: "No such group." });
    await expect(left).rejects.toMatchObject({ code: "NOT_FOUND" });
    // Every group frame is news for the app, asked or not.
    expect(news).toEqual(["gb:Bob's", "g9:Added", "g1:Team", "g2:Renamed", "g2:Renamed"]);
    client.close();
  });

  it("matches a group command's refusal to the command, not to a send waiting for its ack", async () => {
    const { client } = makeClient();
    const socket = await connected(client);
    const sending = client.sendMessage({ groupId: "g1", content: "in flight" });
    const renaming = client.renameGroup("g2", "New name");
    socket.receive({ type: "error", code: "NOT_FOUND", message: "No such group." });
    await expect(renaming).rejects.toMatchObject({ code: "NOT_FOUND" });
    expect(client.pending()).toMatchObject([{ groupId: "g1", content: "in flight" }]);
    socket.receive(groupAckFor(socket.sentOf("group_message")[0] as Record<string, unknown>));
    await expect(sending).resolves.toMatchObject({ groupId: "g1" });
    client.close();
  });

  it("matches a refusal naming a group to a request about that group, or to none", async () => {
    const { client } = makeClient();
    const socket = await connected(client);
    const errors: string[] = [];
    client.on("error", (error) => errors.push(error.code));
    const older = client.history({ groupId: "g1" });
    const refused = client.history({ groupId: "g2" });
    socket.receive({ type: "error", code: "FORBIDDEN", message: "Not a member.", groupId: "g2" });
    await expect(refused).rejects.toMatchObject({ code: "FORBIDDEN" });
    // A mark_read has no answer: its refusal is reported, and fails no other request.
    client.markRead({ groupId: "g3" }, 5);
    socket.receive({ type: "error", code: "FORBIDDEN", message: "Not a member.", groupId: "g3" });
    socket.receive({ type: "message_history", with: "g1", messages: [], hasMore: false });
    await expect(older).resolves.toMatchObject({ messages: [] });
    expect(errors).toEqual(["FORBIDDEN", "FORBIDDEN"]);
    client.close();
  });

  it("reads groups, group history, read counts; marks a group read (offline: on the next connect) and types in it", async () => {
    const { client } = makeClient();
    client.markRead({ groupId: "g1" }, 3);
    client.markRead({ groupId: "g1" }, 4);
    client.markRead("g1", 2); // a user named like the group: its own mark
    client.typing({ groupId: "g1" }, "start"); // offline: dropped
    const socket = await connected(client);
    expect(socket.sent).toEqual([
      { type: "mark_read", groupId: "g1", upTo: 4 },
      { type: "mark_read", with: "g1", upTo: 2 },
    ]);
    socket.sent.length = 0;
    client.typing({ groupId: "g1" }, "start");
    const groups = client.getGroups();
    const page = client.history({ groupId: "g1" }, { limit: 20, before: 9 });
    const readBy = client.readBy("g1", 8);
    const conversations = client.conversations();
    expect(socket.sent).toEqual([
      { type: "typing", groupId: "g1", state: "start" },
      { type: "get_groups" },
      { type: "get_history", groupId: "g1", limit: 20, before: 9 },
      { type: "get_read_by", groupId: "g1", seq: 8 },
      { type: "get_conversations" },
    ]);
    socket.receive({ type: "groups", groups: [group("g1")] });
    const log = [entry("e1", 1).message, entry("m2", 2).message];
    socket.receive({ type: "message_history", groupId: "g1", messages: log, hasMore: true });
    socket.receive({ type: "read_by", groupId: "g1", seq: 8, count: 1, members: 2 });
    const item = { groupId: "g1", name: "Team", lastMessage: log[1], unread: 2 };
    socket.receive({ type: "conversations", items: [item] });
    await expect(groups).resolves.toEqual([group("g1")]);
    await expect(page).resolves.toMatchObject({ groupId: "g1", messages: log, hasMore: true });
    await expect(readBy).resolves.toMatchObject({ groupId: "g1", seq: 8, count: 1, members: 2 });
    await expect(conversations).resolves.toEqual([item]);
    // Typing and read receipts of a group reach the app with their groupId.
    const seen: unknown[] = [];
    client.on("typing", (typing) => seen.push(typing));
    client.on("receipt", (receipt) => seen.push(receipt));
    socket.receive({ type: "typing", groupId: "g1", from: "bob", state: "start" });
    socket.receive({ type: "receipt", kind: "read", groupId: "g1", from: "bob", upTo: 2 });
    expect(seen).toEqual([
      { type: "typing", groupId: "g1", from: "bob", state: "start" },
      { type: "receipt", kind: "read", groupId: "g1", from: "bob", upTo: 2 },
    ]);
    client.close();
  });
});
