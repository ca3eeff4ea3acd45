/**
 * docs/asyncapi.yaml is valid AsyncAPI (the official parser, warnings included) and says what
 * this package does: the same client command types, the same server frame types, the same error
 * codes, nothing more; and every field an encoder writes is one the document describes.
 */
import { fileURLToPath } from "node:url";
import { fromFile, Parser } from "@asyncapi/parser";
import { beforeAll, describe, expect, it } from "vitest";
import * as protocol from "../src/index.js";
import { CLIENT_COMMAND_TYPES, ErrorCode, parseClientFrame } from "../src/index.js";

const file = fileURLToPath(new URL("../../../docs/asyncapi.yaml", import.meta.url));

/** A JSON Schema as the parser hands it out: $refs resolved into the objects themselves. */
interface Schema {
  readonly properties?: Record<string, Schema>;
  readonly items?: Schema;
  readonly const?: unknown;
  readonly enum?: readonly unknown[];
}

/** A message of the document: its payload schema and the `type` it declares. */
interface DocMessage {
  readonly id: string;
  readonly type: string;
  readonly payload: Schema;
}

const ENCODED_MESSAGE = protocol.encodeMessage({
  id: "5f0c6a3e-1a7b-4c8e-9d2f-0b1c2d3e4f50",
  from: "alice",
  to: "bob",
  content: "hello",
  timestamp: "2026-11-26T03:00:00.000Z",
  seq: 1,
  clientMsgId: "c-1",
});

const GROUP = {
  groupId: "g-1",
  name: "team",
  members: ["alice", "bob"],
  admins: ["alice"],
  createdBy: "alice",
  createdAt: "2026-11-26T03:00:00.000Z",
};
const GROUP_MESSAGE = protocol.encodeGroupMessage({
  id: "5f0c6a3e-1a7b-4c8e-9d2f-0b1c2d3e4f51",
  groupId: "g-1",
  from: "alice",
  content: "hi all",
  timestamp: "2026-11-26T03:00:00.000Z",
  seq: 2,
  clientMsgId: "c-2",
});
const GROUP_EVENT = protocol.encodeGroupMessage({
  id: "5f0c6a3e-1a7b-4c8e-9d2f-0b1c2d3e4f52",
  groupId: "g-1",
  from: "alice",
  event: { kind: "created", name: "team", members: ["alice", "bob"] },
  timestamp: "2026-11-26T03:00:00.000Z",
  seq: 1,
});

/**
 * One frame from every encoder this package exports (every `*Frame` function), with each optional
 * field present, so that the fields the document must describe all appear.
 */
const SAMPLE_FRAMES: Record<string, () => string> = {
  directMessageFrame: () => protocol.directMessageFrame(ENCODED_MESSAGE, 7, true),
  messageAckFrame: () =>
    protocol.messageAckFrame({
      messageId: "m-1",
      to: "bob",
      timestamp: "2026-11-26T03:00:00.000Z",
      status: "delivered",
      seq: 1,
      position: 7,
      clientMsgId: "c-1",
    }),
  presenceFrame: () => protocol.presenceFrame("alice", "online", ["alice", "bob"]),
  presenceDeltaFrame: () => protocol.presenceDeltaFrame("alice", "offline"),
  onlineUsersFrame: () => protocol.onlineUsersFrame(["alice"]),
  messageHistoryFrame: () => protocol.messageHistoryFrame("bob", [ENCODED_MESSAGE], true),
  syncedFrame: () => protocol.syncedFrame(9, { from: 1, to: 3 }),
  receiptFrame: () => protocol.receiptFrame("read", "bob", 1),
  typingFrame: () => protocol.typingFrame("bob", "start"),
  conversationsFrame: () =>
    protocol.conversationsFrame([{ with: "bob", lastMessageJson: ENCODED_MESSAGE, unread: 2 }]),
  pongFrame: () => protocol.pongFrame("2026-11-26T03:00:00.000Z"),
  groupMessageFrame: () => protocol.groupMessageFrame("g-1", GROUP_EVENT, 8, true),
  groupMessageAckFrame: () =>
    protocol.groupMessageAckFrame({
      messageId: "m-2",
      groupId: "g-1",
      timestamp: "2026-11-26T03:00:00.000Z",
      status: "queued",
      seq: 2,
      position: 9,
      clientMsgId: "c-2",
    }),
  groupFrame: () => protocol.groupFrame(GROUP),
  groupsFrame: () => protocol.groupsFrame([GROUP]),
  groupHistoryFrame: () => protocol.groupHistoryFrame("g-1", [GROUP_MESSAGE, GROUP_EVENT], false),
  groupReceiptFrame: () => protocol.groupReceiptFrame("g-1", "bob", 2),
  groupTypingFrame: () => protocol.groupTypingFrame("g-1", "bob", "stop"),
  readByFrame: () => protocol.readByFrame("g-1", 2, 1, 2),
  groupPresenceFrame: () => protocol.groupPresenceFrame("g-1", "bob", "online"),
  conversationsWithGroupsFrame: () =>
    protocol.conversationsWithGroupsFrame([
      { with: "bob", lastMessageJson: ENCODED_MESSAGE, unread: 0 },
      { groupId: "g-1", name: "team", lastMessageJson: GROUP_MESSAGE, unread: 1 },
    ]),
  tokenExpiringFrame: () => protocol.tokenExpiringFrame(1_795_000_000),
  refreshedFrame: () => protocol.refreshedFrame(1_795_003_600),
  errorFrame: () =>
    protocol.errorFrame(ErrorCode.UNAVAILABLE, "Try again.", {
      outcome: "unknown",
      clientMsgId: "c-1",
      limit: "messages",
      retryAfterMs: 1000,
    }),
};

let clientMessages: DocMessage[] = [];
let serverMessages: DocMessage[] = [];

beforeAll(async () => {
  const { document, diagnostics } = await fromFile(new Parser(), file).parse();
  // Severity 0 is an error, 1 a warning; information and hints (2, 3) are not problems.
  const problems = diagnostics
    .filter((diagnostic) => diagnostic.severity <= 1)
    .map(
      (diagnostic) => `${diagnostic.code}: ${diagnostic.message} at ${diagnostic.path.join(".")}`,
    );
  expect(problems).toEqual([]);
  if (document === undefined) throw new Error("docs/asyncapi.yaml did not parse");
  expect(document.version()).toBe("3.1.0");
  const messagesOf = (action: "send" | "receive") =>
    document
      .operations()
      .all()
      .filter((operation) => operation.action() === action)
      .flatMap((operation) => operation.messages().all())
      .map((message) => {
        const payload = (message.payload()?.json() ?? {}) as Schema;
        return { id: message.id(), type: String(payload.properties?.["type"]?.const), payload };
      });
  // The document is written from the server's side: it receives commands and sends frames.
  clientMessages = messagesOf("receive");
  serverMessages = messagesOf("send");
}, 30_000);

describe("docs/asyncapi.yaml", () => {
  it("documents exactly the client command types the protocol parses", () => {
    const documented = new Set(clientMessages.map((message) => message.type));
    expect([...documented].sort()).toEqual([...CLIENT_COMMAND_TYPES].sort());
    for (const type of CLIENT_COMMAND_TYPES) {
      const parsed = parseClientFrame(JSON.stringify({ type }));
      expect(parsed.ok || parsed.error.code !== ErrorCode.UNKNOWN_TYPE, type).toBe(true);
    }
  });

  it("documents exactly the frame types the protocol's encoders write", () => {
    const encoders = Object.entries(protocol)
      // Encoders only: parseClientFrame reads frames.
      .filter(([name, value]) => /^(?!parse)\w+Frame$/.test(name) && typeof value === "function")
      .map(([name]) => name);
    // A new encoder needs a sample above, and so a place in the document.
    expect(encoders.sort()).toEqual(Object.keys(SAMPLE_FRAMES).sort());
    const written = new Set(
      Object.values(SAMPLE_FRAMES).map((sample) => (JSON.parse(sample()) as { type: string }).type),
    );
    const documented = new Set(serverMessages.map((message) => message.type));
    expect([...documented].sort()).toEqual([...written].sort());
  });

  it("describes every field of every frame the encoders write", () => {
    for (const [encoder, sample] of Object.entries(SAMPLE_FRAMES)) {
      const frame = JSON.parse(sample()) as Record<string, unknown>;
      const candidates = serverMessages.filter((message) => message.type === frame["type"]);
      // Two documented messages may share a type (presence with and without the online list):
      // the frame must fit one of them entirely.
      const misfits = candidates.map((message) => undocumented(frame, message.payload, ""));
      const best =
        misfits.length === 0
          ? [`no message of type ${String(frame["type"])}`]
          : misfits.reduce((a, b) => (a.length <= b.length ? a : b));
      expect(best, `${encoder}: fields the document does not describe`).toEqual([]);
    }
  });

  it("lists exactly the protocol's error codes", () => {
    const error = serverMessages.find((message) => message.type === "error");
    const codes = error?.payload.properties?.["code"]?.enum ?? [];
    expect([...codes].sort()).toEqual(Object.values(ErrorCode).sort());
  });
});

/** Paths of the fields of `value` that `schema` does not describe (objects and arrays walked). */
function undocumented(value: unknown, schema: Schema, at: string): string[] {
  if (Array.isArray(value)) {
    return schema.items === undefined
      ? value.length > 0 && typeof value[0] === "object"
        ? [`${at}[]`]
        : []
      : value.flatMap((item, i) => undocumented(item, schema.items as Schema, `${at}[${i}]`));
  }
  if (typeof value !== "object" || value === null) return [];
  return Object.entries(value).flatMap(([key, field]) => {
    const fieldSchema = schema.properties?.[key];
    const path = at === "" ? key : `${at}.${key}`;
    return fieldSchema === undefined ? [path] : undocumented(field, fieldSchema, path);
  });
}
