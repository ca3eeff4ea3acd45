import {
  type ClientStorage,
  type GroupInfo,
  type GroupMessage,
  MrezhenClient,
  memoryStorage,
  type WebSocketConstructor,
} from "@mrezhen/client";
import { eventually, mintToken } from "@mrezhen/testkit";
import { describe, expect, it, onTestFinished } from "vitest";
import WebSocket from "ws";
import { startNode } from "./helpers.js";

/**
 * The SDK's group methods against a real node (the embedded engine): what the server promises
 * for a group message (stored once before its ack, replayed with `since`, in `seq` order) must
 * reach the app through the SDK's outbox, `groupMessage` events and cursor.
 */
function sdk(userId: string, url: string, storage: ClientStorage = memoryStorage()) {
  const client = new MrezhenClient({
    url,
    getToken: () => mintToken({ sub: userId }),
    // Node 20 has no global WebSocket; ws's has the same shape.
    WebSocket: WebSocket as unknown as WebSocketConstructor,
    storage,
    presence: "off",
  });
  const entries: GroupMessage[] = [];
  const groups: GroupInfo[] = [];
  client.on("groupMessage", (entry) => entries.push(entry));
  client.on("group", (group) => groups.push(group));
  onTestFinished(() => client.close());
  return { client, entries, groups, storage };
}

const open = (client: MrezhenClient) => eventually(() => expect(client.state).toBe("open"), 10_000);

describe("the SDK's groups on a real node", () => {
  it("creates a group, sends through the outbox (offline too), refuses non-members, replays once, counts unread, renames and removes", async () => {
    const { wsUrl } = await startNode();
    const alice = sdk("grp-alice", wsUrl);
    const bob = sdk("grp-bob", wsUrl);
    const carol = sdk("grp-carol", wsUrl);
    for (const { client } of [alice, bob, carol]) {
      await client.connect();
      await open(client);
    }

    const group = await alice.client.createGroup("Team", ["grp-bob", "grp-carol"]);
    expect(group).toMatchObject({ name: "Team", createdBy: "grp-alice" });
    expect([...group.members].sort()).toEqual(["grp-alice", "grp-bob", "grp-carol"]);
    const { groupId } = group;
    // The others hear of it at once, and get the `created` entry in their inbox.
    await eventually(() => expect(bob.groups.map((g) => g.groupId)).toContain(groupId));
    await eventually(() => expect(carol.entries.map((e) => e.event?.kind)).toEqual(["created"]));

    // Each member sends; every ack names the group and a distinct seq.
    const acks = [];
    for (const [who, text] of [
      [alice, "from alice"],
      [bob, "from bob"],
      [carol, "from carol"],
    ] as const) {
      acks.push(await who.client.sendMessage({ groupId, content: text }));
    }
    expect(acks.map((ack) => [ack.groupId, ack.seq])).toEqual([
      [groupId, 2],
      [groupId, 3],
      [groupId, 4],
    ]);
    await eventually(() =>
      expect(carol.entries.filter((e) => e.content !== undefined).map((e) => e.content)).toEqual([
        "from alice",
        "from bob",
      ]),
    );

    // Carol goes away and writes meanwhile: the send waits in the (persisted) outbox, and a new
    // client on the same storage, as after a reload, sends it once.
    carol.client.close();
    void carol.client.sendMessage({ groupId, content: "written offline" });
    await eventually(() => expect(carol.client.pending()).toHaveLength(1));
    const carolAgain = sdk("grp-carol", wsUrl, carol.storage);
    await carolAgain.client.connect();
    await eventually(() => expect(carolAgain.client.pending()).toEqual([]), 10_000);
    await eventually(() =>
      expect(alice.entries.map((e) => e.content ?? e.event?.kind)).toEqual([
        "created",
        "from bob",
        "from carol",
        "written offline",
      ]),
    );
    // The reloaded client resumed from its cursor: what it had processed (created, alice's and
    // bob's) did not come again. Its own acked "from carol" did, once: an ack does not move the
    // cursor (as for direct messages), and a reloaded app needs its own messages to draw them.
    // "written offline", settled by its ack, is not emitted as news.
    expect(carolAgain.entries.map((e) => [e.from, e.content])).toEqual([
      ["grp-carol", "from carol"],
    ]);

    // A non-member's send is refused for good with a clear error, and leaves the outbox.
    const dave = sdk("grp-dave", wsUrl);
    await dave.client.connect();
    await open(dave.client);
    await expect(dave.client.sendMessage({ groupId, content: "let me in" })).rejects.toMatchObject({
      code: "FORBIDDEN",
    });
    expect(dave.client.pending()).toEqual([]);

    // Unread counts in conversations, and markRead for the group.
    const unread = async () =>
      (await bob.client.conversations()).find((c) => c.groupId === groupId)?.unread;
    expect(await unread()).toBe(3); // alice's, carol's two: not bob's own
    bob.client.markRead({ groupId }, 5);
    await eventually(async () => expect(await unread()).toBe(0));

    // History: the group's log, membership entries included, by seq.
    const page = await bob.client.history({ groupId }, { limit: 10 });
    expect(page.messages.map((m) => m.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(page.messages[0]?.event).toMatchObject({ kind: "created", name: "Team" });

    // Rename (any member) and removal (the creator) reach the others as entries in order.
    await expect(bob.client.renameGroup(groupId, "Team 2")).resolves.toMatchObject({
      name: "Team 2",
    });
    await alice.client.removeMember(groupId, "grp-carol");
    await eventually(() =>
      expect(carolAgain.entries.map((e) => e.event?.kind)).toEqual([
        undefined,
        "renamed",
        "removed",
      ]),
    );
    await expect(
      carolAgain.client.sendMessage({ groupId, content: "still here?" }),
    ).rejects.toMatchObject({ code: "FORBIDDEN" });
    expect((await alice.client.getGroups()).find((g) => g.groupId === groupId)).toMatchObject({
      name: "Team 2",
      members: expect.not.arrayContaining(["grp-carol"]),
    });
  }, 30_000);
});
