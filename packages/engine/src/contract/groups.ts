import { randomUUID } from "node:crypto";
import { afterEach, describe, expect, it } from "vitest";
import { type Engine, type GroupLimits, GroupRefusedError, type MessageEvent } from "../ports.js";
import {
  type BackendFactory,
  type ContractBackend,
  eventually,
  groupInput,
  groupInboxLabels as inboxLabels,
  entryLabel as label,
  QUIET_MS,
  Recorder,
  sleep,
  takeAllQueued,
} from "./harness.js";

const RATE = { limit: 100_000, windowMs: 60_000 };
const LIMITS: GroupLimits = { maxMembers: 5, maxGroupsPerUser: 3, receiptsMaxMembers: 3 };

interface Entry {
  readonly id: string;
  readonly from: string;
  readonly seq: number;
  readonly content?: string;
  readonly event?: { kind: string; userId?: string; name?: string };
}

const parse = (json: string) => JSON.parse(json) as Entry;

const eventInput = () => ({ eventId: randomUUID(), timestamp: new Date().toISOString() });

async function refusal(promise: Promise<unknown>): Promise<string> {
  try {
    await promise;
  } catch (error) {
    if (error instanceof GroupRefusedError) return error.reason;
    throw error;
  }
  return "accepted";
}

/** GroupStore: groups on the delivery model of direct messages (ports.ts). */
export function groupContract(factory: BackendFactory): void {
  describe("GroupStore", () => {
    let backend: ContractBackend;
    afterEach(async () => backend?.close());

    async function setup(rateLimit = RATE) {
      backend = await factory({ rateLimit, groups: LIMITS });
      const engine = await backend.node();
      const recorder = new Recorder();
      engine.broker.setHandler(recorder);
      return { engine, recorder };
    }

    async function create(engine: Engine, createdBy: string, members: string[], name = "team") {
      return engine.groups.create({
        groupId: randomUUID(),
        name,
        createdBy,
        members,
        ...eventInput(),
      });
    }

    it("creates a group whose `created` event is seq 1 in every member's inbox", async () => {
      const { engine } = await setup();
      const change = await create(engine, "alice", ["bob", "carol", "bob"]);
      const { groupId } = change.group;
      expect(change.seq).toBe(1);
      expect(change.group).toMatchObject({
        name: "team",
        members: ["alice", "bob", "carol"],
        admins: ["alice"],
        createdBy: "alice",
      });
      for (const user of ["alice", "bob", "carol"])
        expect(await inboxLabels(engine, user, groupId)).toEqual(["created"]);
      const created = parse(
        (await engine.groups.history("bob", groupId, 10)).messages[0] as string,
      );
      expect(created).toMatchObject({ seq: 1, from: "alice", event: { kind: "created" } });
      expect((await engine.groups.groupsOf("carol", 10)).map((g) => g.groupId)).toEqual([groupId]);
      expect(await engine.groups.get("bob", groupId)).toEqual(change.group);
    });

    it("stores a message in every member's inbox, gap-free seq, live to the online, queued for the offline", async () => {
      const { engine, recorder } = await setup();
      const { groupId } = (await create(engine, "alice", ["bob", "carol"])).group;
      await engine.broker.subscribe("bob");
      await engine.presence.connect("bob");
      // The sender has two connections: the other one gets a copy, the sending one an ack.
      await engine.broker.subscribe("alice");
      await engine.presence.connect("alice");
      await engine.presence.connect("alice");
      const first = await engine.groups.append(groupInput(groupId, "alice", "one"));
      const second = await engine.groups.append(groupInput(groupId, "bob", "two"));
      if ("refused" in first || "refused" in second) throw new Error("refused");
      expect([first.seq, second.seq]).toEqual([2, 3]);
      expect(first.status).toBe("delivered");
      // bob's own message is acked, not copied to his only connection.
      await eventually(() => {
        const live = recorder.eventsFor("bob").filter((e) => e.groupId === groupId);
        expect(live.map((e) => label(e.messageJson))).toEqual(["one"]);
      });
      await sleep(QUIET_MS);
      const bobLive = recorder.eventsFor("bob").filter((e) => e.groupId === groupId);
      expect(bobLive.length).toBe(1);
      // Positions are the member's own inbox positions.
      const bobInbox = await engine.messages.readInbox("bob", 0, 100);
      expect(bobLive[0]?.position).toBe(bobInbox.entries[1]?.position);
      expect(second.senderPosition).toBe(bobInbox.entries[2]?.position);
      await eventually(() => {
        const copies = recorder.eventsFor("alice").filter((e) => e.groupId === groupId);
        expect(copies.map((e) => [label(e.messageJson), e.excludeConnId])).toEqual([
          ["one", "alice-conn"],
          ["two", undefined],
        ]);
      });
      // carol is offline: both wait in her queue, in order, after the `created` event.
      const queued = await takeAllQueued(engine.messages, "carol");
      expect(queued.map((q) => label(q.messageJson))).toEqual(["created", "one", "two"]);
      expect(queued.every((q) => q.groupId === groupId)).toBe(true);
      const aliceInbox = await engine.messages.readInbox("alice", 0, 100);
      expect(aliceInbox.entries.map((e) => e.position)).toContain(first.senderPosition);
      const history = await engine.groups.history("carol", groupId, 10);
      expect(history.messages.map((m) => parse(m).seq)).toEqual([1, 2, 3]);
    });

    it("is idempotent per (sender, clientMsgId)", async () => {
      const { engine } = await setup();
      const { groupId } = (await create(engine, "alice", ["bob"])).group;
      const first = await engine.groups.append(
        groupInput(groupId, "alice", "once", { clientMsgId: "k1" }),
      );
      const retry = await engine.groups.append(
        groupInput(groupId, "alice", "once", { clientMsgId: "k1" }),
      );
      expect(retry).toEqual({ ...first, duplicate: true });
      expect(await inboxLabels(engine, "bob", groupId)).toEqual(["created", "once"]);
      const other = await engine.groups.append(
        groupInput(groupId, "bob", "mine", { clientMsgId: "k1" }),
      );
      expect("refused" in other || other.duplicate).toBe(false);
    });

    it("refuses non-members (forbidden) and unknown groups (not_found)", async () => {
      const { engine } = await setup();
      const { groupId } = (await create(engine, "alice", ["bob"])).group;
      expect(await refusal(engine.groups.append(groupInput(groupId, "eve", "hi")))).toBe(
        "forbidden",
      );
      expect(await refusal(engine.groups.history("eve", groupId, 10))).toBe("forbidden");
      expect(await refusal(engine.groups.get("eve", groupId))).toBe("forbidden");
      expect(await refusal(engine.groups.markRead("eve", groupId, 1))).toBe("forbidden");
      const unknown = randomUUID();
      expect(await refusal(engine.groups.append(groupInput(unknown, "alice", "hi")))).toBe(
        "not_found",
      );
      expect(await refusal(engine.groups.history("alice", unknown, 10))).toBe("not_found");
      // Only admins add or remove.
      expect(
        await refusal(
          engine.groups.change({
            groupId,
            actor: "bob",
            kind: "add",
            userId: "eve",
            ...eventInput(),
          }),
        ),
      ).toBe("forbidden");
      expect(await inboxLabels(engine, "alice", groupId)).toEqual(["created"]);
    });

    it("puts joins, removals, leaves and renames in the log, each delivered to the members of its time", async () => {
      const { engine } = await setup();
      const { groupId } = (await create(engine, "alice", ["bob"])).group;
      const change = (kind: "add" | "remove" | "leave" | "rename", actor: string, more = {}) =>
        engine.groups.change({ groupId, actor, kind, ...more, ...eventInput() });
      await engine.groups.append(groupInput(groupId, "alice", "before dave"));
      const joined = await change("add", "alice", { userId: "dave" });
      expect(joined.group.members).toEqual(["alice", "bob", "dave"]);
      expect(joined.seq).toBe(3);
      await engine.groups.append(groupInput(groupId, "dave", "hello from dave"));
      const removed = await change("remove", "alice", { userId: "bob" });
      expect(removed.group.members).toEqual(["alice", "dave"]);
      await engine.groups.append(groupInput(groupId, "alice", "after bob"));
      await change("rename", "dave", { name: "renamed" });
      await change("leave", "dave");
      await engine.groups.append(groupInput(groupId, "alice", "alone"));

      expect(await inboxLabels(engine, "alice", groupId)).toEqual([
        "created",
        "before dave",
        "joined:dave",
        "hello from dave",
        "removed:bob",
        "after bob",
        "renamed",
        "left:dave",
        "alone",
      ]);
      // bob gets his own removal, then nothing.
      expect(await inboxLabels(engine, "bob", groupId)).toEqual([
        "created",
        "before dave",
        "joined:dave",
        "hello from dave",
        "removed:bob",
      ]);
      // dave from his join to his leave.
      expect(await inboxLabels(engine, "dave", groupId)).toEqual([
        "joined:dave",
        "hello from dave",
        "removed:bob",
        "after bob",
        "renamed",
        "left:dave",
      ]);
      // A removed member cannot send, and reads history up to its removal only.
      expect(await refusal(engine.groups.append(groupInput(groupId, "bob", "let me in")))).toBe(
        "forbidden",
      );
      const bobHistory = await engine.groups.history("bob", groupId, 100);
      expect(bobHistory.messages.map(label).at(-1)).toBe("removed:bob");
      expect((await engine.groups.groupsOf("bob", 10)).length).toBe(0);
      expect((await engine.groups.get("alice", groupId)).name).toBe("renamed");
      // Seqs are gap-free across messages and events.
      const all = await engine.groups.history("alice", groupId, 100);
      expect(all.messages.map((m) => parse(m).seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9]);
      // Adding a member again: from the new join on, not what it missed.
      await change("add", "alice", { userId: "bob" });
      expect((await inboxLabels(engine, "bob", groupId)).slice(-2)).toEqual([
        "removed:bob",
        "joined:bob",
      ]);
      // Changes that change nothing store nothing.
      const again = await change("add", "alice", { userId: "bob" });
      expect(again.seq).toBe(0);
    });

    it("pages history by seq", async () => {
      const { engine } = await setup();
      const { groupId } = (await create(engine, "alice", ["bob"])).group;
      for (let i = 1; i <= 5; i++)
        await engine.groups.append(groupInput(groupId, "alice", `m${i}`));
      const newest = await engine.groups.history("bob", groupId, 2);
      expect(newest.messages.map(label)).toEqual(["m4", "m5"]);
      expect(newest.hasMore).toBe(true);
      const older = await engine.groups.history("bob", groupId, 10, 4);
      expect(older.messages.map(label)).toEqual(["created", "m1", "m2"]);
      expect(older.hasMore).toBe(false);
    });

    it("enforces the member and group limits", async () => {
      const { engine } = await setup();
      expect(await refusal(create(engine, "alice", ["b", "c", "d", "e", "f"]))).toBe("group_full");
      const { groupId } = (await create(engine, "alice", ["b", "c", "d"])).group;
      await engine.groups.change({
        groupId,
        actor: "alice",
        kind: "add",
        userId: "e",
        ...eventInput(),
      });
      expect(
        await refusal(
          engine.groups.change({
            groupId,
            actor: "alice",
            kind: "add",
            userId: "f",
            ...eventInput(),
          }),
        ),
      ).toBe("group_full");
      await create(engine, "zed", []);
      await create(engine, "zed", []);
      await create(engine, "zed", []);
      expect(await refusal(create(engine, "zed", []))).toBe("too_many_groups");
      expect(
        await refusal(
          engine.groups.change({
            groupId,
            actor: "alice",
            kind: "remove",
            userId: "e",
            ...eventInput(),
          }),
        ),
      ).toBe("accepted");
      expect(
        await refusal(
          engine.groups.change({
            groupId,
            actor: "alice",
            kind: "add",
            userId: "zed",
            ...eventInput(),
          }),
        ),
      ).toBe("too_many_groups");
    });

    it("counts the sender's rate limit shared with direct messages", async () => {
      const { engine } = await setup({ limit: 2, windowMs: 60_000 });
      const { groupId } = (await create(engine, "alice", ["bob"])).group;
      await engine.messages.appendIfAllowed({
        id: randomUUID(),
        from: "alice",
        to: "bob",
        content: "dm",
        timestamp: new Date().toISOString(),
        senderConnId: "c",
      });
      const allowed = await engine.groups.append(groupInput(groupId, "alice", "g1"));
      expect("refused" in allowed).toBe(false);
      const refused = await engine.groups.append(groupInput(groupId, "alice", "g2"));
      expect(refused).toMatchObject({ refused: true, limit: "rate" });
      expect(await inboxLabels(engine, "bob", groupId)).toEqual(["created", "g1"]);
    });

    it("counts unread per member across joins, own messages, read marks and a rejoin", async () => {
      const { engine } = await setup();
      const { groupId } = (await create(engine, "alice", ["bob"])).group;
      const send = async (from: string, content: string) => {
        const result = await engine.groups.append(groupInput(groupId, from, content));
        if ("refused" in result) throw new Error("refused");
        return result.seq;
      };
      const unread = async (user: string) =>
        (await engine.messages.conversations(user, 10)).find((c) => c.with === groupId)?.unread;
      const change = (kind: "add" | "remove", userId: string) =>
        engine.groups.change({ groupId, actor: "alice", kind, userId, ...eventInput() });
      await send("alice", "a1");
      await send("alice", "a2");
      await change("add", "carol");
      expect(await unread("carol")).toBe(0); // what came before the join is not unread
      const b1 = await send("bob", "b1");
      await send("carol", "c1");
      expect([await unread("alice"), await unread("bob"), await unread("carol")]).toEqual([
        2, 3, 1,
      ]);
      await engine.groups.markRead("bob", groupId, b1);
      expect(await unread("bob")).toBe(1); // c1
      await send("bob", "b2"); // one's own message is never unread
      expect(await unread("bob")).toBe(1);
      await change("remove", "carol");
      await change("add", "carol");
      expect(await unread("carol")).toBe(0);
      await send("alice", "a3");
      expect([await unread("alice"), await unread("bob"), await unread("carol")]).toEqual([
        3, 2, 1,
      ]);
    });

    it("keeps unread counts and read marks; receipts to members in small groups; read-by counts", async () => {
      const { engine, recorder } = await setup();
      const { groupId } = (await create(engine, "alice", ["bob", "carol"])).group;
      await engine.broker.subscribe("alice");
      await engine.presence.connect("alice");
      const m1 = await engine.groups.append(groupInput(groupId, "alice", "m1"));
      await engine.groups.append(groupInput(groupId, "alice", "m2"));
      await engine.groups.append(groupInput(groupId, "bob", "m3"));
      if ("refused" in m1) throw new Error("refused");
      const bobConversations = await engine.messages.conversations("bob", 10);
      expect(bobConversations).toEqual([
        expect.objectContaining({ with: groupId, group: { name: "team" }, unread: 2 }),
      ]);
      expect(label(bobConversations[0]?.lastMessageJson as string)).toBe("m3");
      await engine.groups.markRead("bob", groupId, m1.seq);
      expect((await engine.messages.conversations("bob", 10))[0]?.unread).toBe(1);
      await eventually(() =>
        expect(recorder.framesFor("alice")).toContainEqual({
          type: "receipt",
          kind: "read",
          groupId,
          from: "bob",
          upTo: m1.seq,
        }),
      );
      expect(await engine.groups.readBy("alice", groupId, m1.seq)).toEqual({
        count: 1,
        members: 2,
      });
      // Direct conversations sit beside groups, most recent first.
      await engine.messages.append({
        id: randomUUID(),
        from: "dave",
        to: "bob",
        content: "dm",
        timestamp: new Date(Date.now() + 1000).toISOString(),
        senderConnId: "c",
      });
      const both = await engine.messages.conversations("bob", 10);
      expect(both.map((c) => c.with)).toEqual(["dave", groupId]);
      expect((await engine.messages.contacts("bob", 10)).includes(groupId)).toBe(false);
    });

    it("sends typing to the other members only", async () => {
      const { engine, recorder } = await setup();
      const { groupId } = (await create(engine, "alice", ["bob"])).group;
      // Connected as a session connects: subscribed, then registered.
      for (const user of ["alice", "bob"]) {
        await engine.broker.subscribe(user);
        await engine.presence.connect(user);
      }
      await engine.groups.publishToMembers("alice", groupId, '{"type":"typing"}');
      await eventually(() => expect(recorder.framesFor("bob")).toEqual([{ type: "typing" }]));
      await sleep(QUIET_MS);
      expect(recorder.framesFor("alice")).toEqual([]);
      expect(await refusal(engine.groups.publishToMembers("eve", groupId, "{}"))).toBe("forbidden");
    });

    it("orders a message racing a removal: before it (delivered to the removed) or after (not)", async () => {
      const { engine } = await setup();
      for (let round = 0; round < 10; round++) {
        const [admin, bob, carol] = [`admin${round}`, `bob${round}`, `carol${round}`];
        const { groupId } = (await create(engine, admin, [bob, carol])).group;
        const sends = Array.from({ length: 5 }, (_, i) =>
          engine.groups.append(groupInput(groupId, carol, `race${i}`)),
        );
        const removal = engine.groups.change({
          groupId,
          actor: admin,
          kind: "remove",
          userId: bob,
          ...eventInput(),
        });
        await Promise.all([...sends, removal]);
        const log = (await engine.groups.history(admin, groupId, 100)).messages.map(label);
        const removedAt = log.indexOf(`removed:${bob}`);
        // bob has exactly the log up to his removal: nothing after, nothing missing.
        expect(await inboxLabels(engine, bob, groupId)).toEqual(log.slice(0, removedAt + 1));
      }
    });

    it("delivers live to a member on another node", async () => {
      if (backend === undefined) await setup();
      await backend.close();
      const { engine } = await setup();
      if (backend.maxNodes < 2) return;
      const other = await backend.node();
      const recorder = new Recorder();
      other.broker.setHandler(recorder);
      const { groupId } = (await create(engine, "alice", ["bob", "carol"])).group;
      await other.broker.subscribe("bob");
      await other.presence.connect("bob");
      const sent = await other.groups.append(groupInput(groupId, "carol", "cross"));
      if ("refused" in sent) throw new Error("refused");
      await eventually(() => {
        const live = recorder
          .eventsFor("bob")
          .filter((e: MessageEvent) => e.groupId === groupId)
          .map((e) => label(e.messageJson));
        expect(live).toEqual(["cross"]);
      });
    });
  });
}
