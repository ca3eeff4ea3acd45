/**
 * The presence mirror's algorithm (presence-mirror.ts) against a scripted stand-in for Redis, so
 * that the orders a real Redis rarely produces can be set up exactly: deltas before, during and
 * after a snapshot, gaps, a snapshot overtaken by a newer one, a link lost mid-snapshot.
 * No Redis needed. The end-to-end behaviour is in presence-scale.test.ts.
 */
import type { PresenceChange } from "@mrezhen/engine";
import type { Redis } from "ioredis";
import { describe, expect, it } from "vitest";
import { decodePresenceDelta, encodePresenceDelta, type PresenceDelta } from "../src/codec.js";
import { Keys } from "../src/keys.js";
import { PresenceMirror } from "../src/presence-mirror.js";
import { SNAPSHOT } from "../src/scripts.js";

/** A Redis whose snapshot replies the test hands out one by one. */
class FakeRedis {
  readonly pending: { resolve: (reply: unknown) => void; reject: (error: Error) => void }[] = [];

  evalsha(sha: string): Promise<unknown> {
    if (sha !== SNAPSHOT.sha) throw new Error(`unexpected script ${sha}`);
    return new Promise((resolve, reject) => this.pending.push({ resolve, reject }));
  }

  /** Answers the oldest snapshot request with `version` and `members`. */
  async answer(version: number, members: string[]): Promise<void> {
    const request = this.pending.shift();
    if (request === undefined) throw new Error("no snapshot was asked for");
    request.resolve([String(version), members]);
    await flush();
  }

  async fail(): Promise<void> {
    const request = this.pending.shift();
    if (request === undefined) throw new Error("no snapshot was asked for");
    const error = new Error("Connection is closed.");
    request.reject(error);
    await flush();
  }
}

const flush = () => new Promise((resolve) => setImmediate(resolve));
const SILENT = { info() {}, warn() {}, error() {} };

function setup() {
  const redis = new FakeRedis();
  const changes: string[] = [];
  const mirror = new PresenceMirror(
    redis as unknown as Redis,
    new Keys("t:", "n"),
    SILENT,
    (change: PresenceChange) =>
      changes.push(`${change.status} ${change.userId} [${[...change.online].sort().join(",")}]`),
  );
  let version = 0;
  const delta = (status: "online" | "offline", userId: string, at?: number): PresenceDelta => {
    version = at ?? version + 1;
    return { version, status, userId };
  };
  return { redis, changes, mirror, delta };
}

describe("presence mirror", () => {
  it("decodes what the scripts publish, whatever the user id", () => {
    for (const userId of ["alice", "a|b|c", "p|1|on|x", "", "é 😀\n"]) {
      for (const status of ["online", "offline"] as const) {
        const delta = { version: 42, status, userId };
        expect(decodePresenceDelta(encodePresenceDelta(delta))).toEqual(delta);
      }
    }
    expect(encodePresenceDelta({ version: 7, status: "offline", userId: "bob" })).toBe(
      "p|7|off|bob",
    );
    for (const bad of ["", "p|", "p|x|on|a", "p|0|on|a", "p|3|in|a", '{"type":"presence"}']) {
      expect(decodePresenceDelta(bad)).toBeUndefined();
    }
  });

  it("holds deltas until its first snapshot, skips those in it, applies the rest in order", async () => {
    const { redis, changes, mirror } = setup();
    const syncing = mirror.resync();
    mirror.receive({ version: 3, status: "online", userId: "carol" }); // in the snapshot
    mirror.receive({ version: 4, status: "online", userId: "dave" }); // after it
    await redis.answer(3, ["alice", "bob", "carol"]);
    await syncing;
    // The first snapshot announces nothing; the delta after it does.
    expect(changes).toEqual(["online dave [alice,bob,carol,dave]"]);
    expect(mirror.synced).toBe(true);
    // Late deltas (published before the snapshot was read) change nothing.
    mirror.receive({ version: 2, status: "online", userId: "bob" });
    mirror.receive({ version: 4, status: "online", userId: "dave" });
    mirror.receive({ version: 5, status: "offline", userId: "alice" });
    expect(changes).toEqual([
      "online dave [alice,bob,carol,dave]",
      "offline alice [bob,carol,dave]",
    ]);
  });

  it("on a gap, takes a new snapshot, announces the difference, then what came after it", async () => {
    const { redis, changes, mirror, delta } = setup();
    const first = mirror.resync();
    await redis.answer(0, []);
    await first;
    mirror.receive(delta("online", "alice"));
    mirror.receive(delta("online", "bob"));
    delta("offline", "bob"); // 3: lost
    delta("online", "carol"); // 4: lost
    mirror.receive(delta("online", "dave")); // 5: shows the gap
    expect(mirror.synced).toBe(false);
    expect(redis.pending).toHaveLength(1);
    mirror.receive(delta("offline", "alice")); // 6: published after the snapshot was read
    await redis.answer(5, ["alice", "carol", "dave"]);
    expect(changes).toEqual([
      "online alice [alice]",
      "online bob [alice,bob]",
      "offline bob [alice]",
      "online carol [alice,carol]",
      "online dave [alice,carol,dave]",
      "offline alice [carol,dave]",
    ]);
    expect(mirror.synced).toBe(true);
    expect(mirror.snapshotCount).toBe(2);
  });

  it("a resync asked for during another waits for its own snapshot, applying nothing past it", async () => {
    const { redis, changes, mirror, delta } = setup();
    const first = mirror.resync();
    await redis.answer(0, []);
    await first;
    mirror.receive(delta("online", "alice")); // 1

    // A snapshot is under way (read at 1) when a reconnect asks for another.
    const one = mirror.resync();
    const two = mirror.resync();
    expect(one).toBe(two);
    mirror.receive(delta("online", "bob")); // 2
    mirror.receive(delta("online", "carol")); // 3
    await redis.answer(1, ["alice"]);
    // Still holding: the second snapshot (read at 3, say) must not undo bob and carol.
    expect(changes).toEqual(["online alice [alice]"]);
    expect(redis.pending).toHaveLength(1);
    mirror.receive(delta("offline", "alice")); // 4
    await redis.answer(3, ["alice", "bob", "carol"]);
    await two;
    expect(changes).toEqual([
      "online alice [alice]",
      "online bob [alice,bob]",
      "online carol [alice,bob,carol]",
      "offline alice [bob,carol]",
    ]);
    expect(mirror.synced).toBe(true);
  });

  it("after the link drops, holds deltas until the snapshot the reconnect takes", async () => {
    const { redis, changes, mirror, delta } = setup();
    const first = mirror.resync();
    await redis.answer(0, []);
    await first;
    mirror.receive(delta("online", "alice")); // 1

    // A gap starts a snapshot; the link drops while it is under way.
    delta("online", "bob"); // 2: lost
    mirror.receive(delta("online", "carol")); // 3
    mirror.invalidate();
    await redis.answer(3, ["alice", "bob", "carol"]);
    expect(mirror.synced).toBe(false); // installed, but not trusted
    delta("offline", "alice"); // 4: lost with the link
    // Reconnected: re-subscribed first, then the new snapshot.
    const again = mirror.resync();
    mirror.receive(delta("online", "dave")); // 5
    await redis.answer(4, ["bob", "carol"]);
    await again;
    expect(changes).toEqual([
      "online alice [alice]",
      "online bob [alice,bob]",
      "online carol [alice,bob,carol]",
      "offline alice [bob,carol]",
      "online dave [bob,carol,dave]",
    ]);
  });

  it("takes a new snapshot when the version starts again at 1, and replaces its version", async () => {
    const { redis, changes, mirror } = setup();
    const first = mirror.resync();
    await redis.answer(7, ["alice"]);
    await first;
    mirror.receive({ version: 1, status: "online", userId: "bob" });
    expect(mirror.synced).toBe(false);
    await redis.answer(1, ["alice", "bob"]);
    mirror.receive({ version: 2, status: "offline", userId: "alice" });
    expect(changes).toEqual(["online bob [alice,bob]", "offline alice [bob]"]);
  });

  it("stays out of sync, holding deltas, while snapshots fail; recovers on the next try", async () => {
    const { redis, changes, mirror, delta } = setup();
    const first = mirror.resync();
    await redis.answer(0, []);
    await first;
    mirror.invalidate();
    const failed = expect(mirror.resync()).rejects.toThrow("redis unavailable");
    await redis.fail();
    await failed;
    expect(mirror.synced).toBe(false);
    expect(mirror.syncInProgress).toBe(false);
    delta("online", "alice"); // 1: before the retry's snapshot
    const retry = mirror.resync();
    mirror.receive(delta("online", "bob")); // 2
    await redis.answer(1, ["alice"]);
    await retry;
    expect(changes).toEqual(["online alice [alice]", "online bob [alice,bob]"]);
  });

  it("a handler that throws does not stop the mirror", async () => {
    const redis = new FakeRedis();
    let calls = 0;
    const mirror = new PresenceMirror(
      redis as unknown as Redis,
      new Keys("t:", "n"),
      SILENT,
      () => {
        calls++;
        throw new Error("boom");
      },
    );
    const first = mirror.resync();
    await redis.answer(0, []);
    await first;
    mirror.receive({ version: 1, status: "online", userId: "alice" });
    mirror.receive({ version: 2, status: "online", userId: "bob" });
    expect(calls).toBe(2);
    expect([...mirror.online].sort()).toEqual(["alice", "bob"]);
  });
});
