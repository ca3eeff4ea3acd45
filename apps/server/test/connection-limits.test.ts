import { request } from "node:http";
import { connect as connectTcp, type Socket } from "node:net";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import {
  type CloseInfo,
  eventually,
  mintToken,
  TestClient,
  UpgradeRefused,
} from "@mrezhen/testkit";
import { describe, expect, it } from "vitest";
import { startNode, type TestNode, upgradeRequest } from "./helpers.js";

/** What the node answered an upgrade it refused: status, Retry-After and the plain-text body. */
interface Refusal {
  readonly status: number;
  readonly retryAfter: string | undefined;
  readonly body: string;
}

/** Asks for a WebSocket upgrade by hand, to read a refusal's headers and body. */
function upgradeRefusal(url: string, userId: string): Promise<Refusal> {
  return mintToken({ sub: userId }).then(
    (token) =>
      new Promise<Refusal>((resolve, reject) => {
        const req = request(`${url}/ws?token=${token}`, {
          headers: {
            connection: "Upgrade",
            upgrade: "websocket",
            "sec-websocket-version": "13",
            "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
          },
        });
        req.on("upgrade", (_response, socket) => {
          socket.destroy();
          reject(new Error("the upgrade was accepted"));
        });
        req.on("response", (response) => {
          let body = "";
          response.setEncoding("utf8");
          response.on("data", (chunk: string) => {
            body += chunk;
          });
          response.on("end", () =>
            resolve({
              status: response.statusCode ?? 0,
              retryAfter: response.headers["retry-after"],
              body,
            }),
          );
        });
        req.on("error", reject);
        req.end();
      }),
  );
}

async function refusedStatus(wsUrl: string, userId: string): Promise<number | undefined> {
  const token = await mintToken({ sub: userId });
  const outcome = await TestClient.connect(`${wsUrl}?token=${token}`).then(
    (client) => {
      void client.close();
      return undefined;
    },
    (error: unknown) => error,
  );
  return outcome instanceof UpgradeRefused ? outcome.status : undefined;
}

/** Reads one sample of /metrics (`name{labels}` as written, without node_id). */
async function metric(url: string, sample: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  for (const line of text.split("\n")) {
    const cleaned = line
      .replace(/,?node_id="[^"]*"/, "")
      .replace("{,", "{")
      .replace("{}", "");
    if (cleaned.startsWith(`${sample} `)) return Number(cleaned.slice(sample.length + 1));
  }
  throw new Error(`no ${sample} in /metrics`);
}

describe("connection limits", () => {
  it("refuses a user's 17th connection with a plain 429, and takes one again once another closes", async () => {
    const { connect, url, wsUrl } = await startNode();
    const alice = [];
    for (let i = 0; i < 16; i++) alice.push(await connect("alice"));

    const refusal = await upgradeRefusal(url, "alice");
    expect(refusal.status).toBe(429);
    expect(refusal.body).toBe("Too Many Requests: at most 16 connections per user.");
    expect(await refusedStatus(wsUrl, "alice")).toBe(429);
    // Another user is not affected, and the refused ones held no slot.
    const bob = await connect("bob");
    bob.send({ type: "ping" });
    await bob.next("pong");
    expect(await metric(url, 'mrezhen_upgrades_refused_total{reason="user_limit"}')).toBe(2);

    await alice[0]?.close();
    // The slot is given back when the server sees the TCP connection close, a moment later.
    const again = await eventually(() => connect("alice"), 3000);
    again.send({ type: "ping" });
    await again.next("pong");
    expect(await refusedStatus(wsUrl, "alice")).toBe(429);
  });

  it("takes MAX_CONNECTIONS_PER_USER from the environment", async () => {
    const { connect, wsUrl } = await startNode({ MAX_CONNECTIONS_PER_USER: "2" });
    await connect("alice");
    await connect("alice");
    expect(await refusedStatus(wsUrl, "alice")).toBe(429);
  });

  it("refuses upgrades beyond MAX_CONNECTIONS with 503 and Retry-After", async () => {
    const { connect, url, wsUrl } = await startNode({ MAX_CONNECTIONS: "3" });
    const first = await connect("u1");
    await connect("u2");
    await connect("u3");

    const refusal = await upgradeRefusal(url, "u4");
    expect(refusal.status).toBe(503);
    expect(Number(refusal.retryAfter)).toBeGreaterThan(0);
    expect(refusal.body).toMatch(/^Service Unavailable: /);
    expect(await refusedStatus(wsUrl, "u1")).toBe(503);
    expect(await metric(url, 'mrezhen_upgrades_refused_total{reason="node_limit"}')).toBe(2);

    await first.close();
    await eventually(() => connect("u4"), 3000);
  });
});

/** 100 messages of 5,000 control characters: each escapes to `\u0001` in JSON, ~3 MB of history. */
const HEAVY_CONTENT = "\u0001".repeat(5000);
const HISTORY_BYTES = 100 * 6 * 5000;

/** Alice sends bob 100 heavy messages, so that alice's get_history with bob is ~3 MB. */
async function fillHistory(node: TestNode): Promise<void> {
  const filler = await node.connect("alice");
  for (let i = 0; i < 100; i++)
    filler.send({ type: "direct_message", to: "bob", content: HEAVY_CONTENT });
  for (let i = 0; i < 100; i++) await filler.next("message_ack");
  await filler.close();
}

/** A full garbage collection, so that freed Buffers leave `arrayBuffers`. */
const gc = (() => {
  setFlagsFromString("--expose-gc");
  return runInNewContext("gc") as () => void;
})();

/** The bytes the node's TCP sockets hold unsent, read from the sockets themselves. */
function unsentOnSockets(node: TestNode): () => number {
  const sockets = new Set<Socket>();
  node.node.app.server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  });
  return () => {
    let sum = 0;
    for (const socket of sockets) sum += socket.writableLength;
    return sum;
  };
}

async function slowReaderCloses(node: TestNode, trigger: "connection" | "node_budget") {
  return metric(node.url, `mrezhen_slow_reader_closes_total{trigger="${trigger}"}`);
}

/** Waits until the node has read `count` get_history frames (and so answered them, or closed). */
async function historyRequestsRead(node: TestNode, count: number): Promise<void> {
  await eventually(
    async () =>
      expect(await metric(node.url, 'mrezhen_frames_in_total{type="get_history"}')).toBe(count),
    5000,
    5,
  );
}

/** How `client` was closed, or undefined if it was still open after `ms`. */
function closedWithin(client: TestClient, ms: number): Promise<CloseInfo | undefined> {
  return Promise.race([
    client.closed,
    new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), ms)),
  ]);
}

const SLOW_READER_CLOSE = { code: 1013, reason: "slow reader: too much unsent data" };

describe("slow readers", () => {
  it("closes a client over its own 8 MiB of unsent bytes with 1013, not a reset", async () => {
    const node = await startNode({ RATE_LIMIT_MESSAGES: "1000" });
    await fillHistory(node);
    const slow = await node.connect("alice");
    slow.socket.pause();
    // Three 3 MB answers are queued; the fourth finds more than 8 MiB unsent.
    for (let i = 0; i < 4; i++) slow.send({ type: "get_history", with: "bob", limit: 100 });
    await historyRequestsRead(node, 4);
    // Read at once, within the grace: everything sent, then the close frame.
    slow.socket.resume();
    expect(await closedWithin(slow, 3000)).toEqual(SLOW_READER_CLOSE);
    expect(await slowReaderCloses(node, "connection")).toBe(1);
  });

  it("closes the clients holding the most unsent bytes once the node is over MAX_UNSENT_BYTES, with 1013", async () => {
    const node = await startNode({
      MAX_UNSENT_BYTES: String(4 * 1024 * 1024),
      RATE_LIMIT_MESSAGES: "1000",
    });
    await fillHistory(node);
    const small = await node.connect("alice");
    const large = await node.connect("alice");
    small.socket.pause();
    large.socket.pause();
    small.send({ type: "get_history", with: "bob", limit: 60 });
    await historyRequestsRead(node, 1);
    // 1.8 MB and then 6 MB, each under the per-connection limit, together over the node's
    // budget: the larger holder goes, the smaller stays.
    large.send({ type: "get_history", with: "bob", limit: 100 });
    large.send({ type: "get_history", with: "bob", limit: 100 });
    await historyRequestsRead(node, 3);
    large.socket.resume();
    expect(await closedWithin(large, 3000)).toEqual(SLOW_READER_CLOSE);
    small.socket.resume();
    expect((await small.next("message_history"))["messages"]).toHaveLength(60);
    expect(await slowReaderCloses(node, "node_budget")).toBe(1);
  });

  it("keeps a node under attack by non-readers within MAX_UNSENT_BYTES, frees what they held, and serves readers", async () => {
    const budget = 16 * 1024 * 1024;
    const node = await startNode({
      MAX_UNSENT_BYTES: String(budget),
      RATE_LIMIT_MESSAGES: "1000",
      HEARTBEAT_INTERVAL_MS: "600000",
    });
    const unsent = unsentOnSockets(node);
    await fillHistory(node);
    const carol = await node.connect("carol");
    const dave = await node.connect("dave");
    const slow: TestClient[] = [];
    for (let i = 0; i < 8; i++) slow.push(await node.connect("alice"));
    gc();
    const baseline = process.memoryUsage().arrayBuffers;

    // Eight clients stop reading and ask for 2 × 3 MB of history each: 48 MB asked for, each
    // under the 8 MiB per-connection limit, together three times the budget.
    for (const client of slow) {
      client.socket.pause();
      client.send({ type: "get_history", with: "bob", limit: 100 });
      client.send({ type: "get_history", with: "bob", limit: 100 });
    }
    await historyRequestsRead(node, 16);
    // A reader on the same node keeps working.
    for (let i = 0; i < 3; i++) {
      carol.send({ type: "direct_message", to: "dave", content: `hello ${i}` });
      await carol.next("message_ack");
      expect((await dave.next("direct_message"))["message"]).toMatchObject({
        content: `hello ${i}`,
      });
    }
    // Those closed cannot take their close frame (they do not read): after the grace they are
    // destroyed, and what the node holds for the rest is within the budget.
    // (Their buffers are released a moment after their sockets close, hence one wait for both.)
    await eventually(
      () => {
        expect(unsent()).toBeLessThanOrEqual(budget);
        gc();
        expect(process.memoryUsage().arrayBuffers - baseline).toBeLessThanOrEqual(
          budget + HISTORY_BYTES,
        );
      },
      5000,
      50,
    );
    // 16 MiB hold two of the 6 MB backlogs (three if the kernel took a first answer whole).
    expect(await slowReaderCloses(node, "node_budget")).toBeGreaterThanOrEqual(5);
    expect(await slowReaderCloses(node, "connection")).toBe(0);

    // Once the clients are gone, everything their answers held is released.
    for (const client of slow) client.socket.terminate();
    await eventually(
      async () => {
        gc();
        expect(process.memoryUsage().arrayBuffers - baseline).toBeLessThan(HISTORY_BYTES);
        expect(unsent()).toBe(0);
        expect(await metric(node.url, "mrezhen_unsent_bytes")).toBe(0);
      },
      5000,
      50,
    );
  });
});

describe("shedding upgrades while the node runs behind (UPGRADE_SHED_LAG_MS)", () => {
  /**
   * Sends an upgrade on a TCP connection opened beforehand, right after blocking this process'
   * event loop (the node runs in it) for `blockMs`, and returns the node's answer's head.
   */
  async function upgradeAfterStall(url: string, userId: string, blockMs: number): Promise<string> {
    const token = await mintToken({ sub: userId });
    const { port } = new URL(url);
    const socket = connectTcp(Number(port), "127.0.0.1");
    await new Promise((resolve) => socket.once("connect", resolve));
    let answer = "";
    const head = new Promise<string>((resolve, reject) => {
      socket.on("data", (chunk) => {
        answer += chunk.toString();
        if (answer.includes("\r\n\r\n")) resolve(answer.slice(0, answer.indexOf("\r\n\r\n")));
      });
      socket.on("error", reject);
    });
    const until = performance.now() + blockMs;
    while (performance.now() < until) {
      // A node busy with other work: its timers and sockets wait.
    }
    socket.write(upgradeRequest(token));
    try {
      return await head;
    } finally {
      socket.destroy();
    }
  }

  it("refuses an upgrade read while the event loop is late with 503 and Retry-After, and admits the next once caught up", async () => {
    const { url, connect } = await startNode({ UPGRADE_SHED_LAG_MS: "100" });
    const refused = await upgradeAfterStall(url, "bob", 300);
    expect(refused).toMatch(/^HTTP\/1\.1 503 /);
    expect(refused).toMatch(/\r\nretry-after: 1\r\n/i);
    expect(await metric(url, 'mrezhen_upgrades_refused_total{reason="overloaded"}')).toBe(1);
    // Caught up (a tick of its timer on time): the same user gets in, and the node serves.
    await new Promise((resolve) => setTimeout(resolve, 200));
    const bob = await connect("bob");
    bob.send({ type: "ping" });
    await bob.next("pong");
    expect(await upgradeAfterStall(url, "carol", 0)).toMatch(/^HTTP\/1\.1 101 /);
  });

  it("is off by default: the same stall delays the upgrade but does not refuse it", async () => {
    const { url } = await startNode();
    expect(await upgradeAfterStall(url, "bob", 300)).toMatch(/^HTTP\/1\.1 101 /);
  });
});
