// End to end through the edge: real nginx (rendered from nginx/*.template, as docker-compose uses
// them), real Redis, three real nodes built from apps/server. Clients speak wss to nginx only; the
// nodes' own loopback ports are used just to learn which node a client landed on.
import { spawnSync } from "node:child_process";
import { randomUUID } from "node:crypto";
import { existsSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import {
  eventually,
  freePort,
  mintToken,
  redisForTests,
  TestClient,
  UpgradeRefused,
} from "../../../packages/testkit/src/index.js";
import { CLUSTER_DEFAULTS, type Cluster, httpGet, startCluster } from "../src/cluster.mjs";

const nginxBin = process.env["NGINX_BIN"] ?? CLUSTER_DEFAULTS.nginxBin;
const hasNginx = existsSync(nginxBin);
if (!hasNginx) {
  const why = `nginx not found at ${nginxBin} (apt-get install -y --no-install-recommends nginx)`;
  if (process.env["CI"] === "true") throw new Error(`${why}; under CI=true this is a failure.`);
  console.warn(`\n⚠️  SKIPPING the cluster end-to-end test: ${why}.\n`);
}
// REDIS_URL (CI sets it), else testcontainers; neither: a loud skip, or a failure under CI=true.
const redis = hasNginx ? await redisForTests() : undefined;

const secret = `e2e-${randomUUID()}`;
const token = (sub: string) => mintToken({ sub, secret });

describe.skipIf(!redis)("cluster through nginx (wss, 3 nodes, Redis)", () => {
  let cluster: Cluster;
  const clients: TestClient[] = [];

  beforeAll(async () => {
    if (!redis) return;
    cluster = await startCluster({
      nodes: 3,
      port: await freePort(),
      redisUrl: redis.url,
      keyPrefix: redis.prefix,
      jwtSecret: secret,
      // The nodes run dist/main.js, which vitest.global-setup.ts has just built (incrementally).
      build: false,
      // A short drain deadline keeps the stopNode test quick.
      env: { LOG_LEVEL: "warn", SHUTDOWN_TIMEOUT_MS: "5000" },
    });
  }, 60_000);

  afterAll(async () => {
    await Promise.all(clients.map((client) => client.close()));
    await cluster?.stop();
    await redis?.close();
  }, 60_000);

  /** `connections` of every node's own /health, in node order. */
  async function connectionCounts(): Promise<number[]> {
    return Promise.all(
      cluster.nodes.map(async (node) => {
        const { status, body } = await httpGet(`${node.url}/health`);
        expect(status).toBe(200);
        return (body as { connections: number }).connections;
      }),
    );
  }

  /**
   * Connects `userId` through nginx and tells which node took the socket: the one whose own
   * connection count went up by one. Connects one at a time, so exactly one count moves.
   */
  async function connectVia(userId: string): Promise<{ client: TestClient; nodeId: string }> {
    const before = await connectionCounts();
    const client = await TestClient.connect(`${cluster.endpoint}?token=${await token(userId)}`, {
      ca: cluster.ca,
    });
    clients.push(client);
    const index = await eventually(async () => {
      const after = await connectionCounts();
      const grown = after.flatMap((count, i) => (count === (before[i] ?? 0) + 1 ? [i] : []));
      if (grown.length !== 1) throw new Error(`connection counts ${before} -> ${after}`);
      return grown[0] as number;
    });
    // The first answer comes only once the connection is online (registered, subscribed, queue
    // flushed): before it, a message to this user may be queued rather than delivered.
    client.send({ type: "ping" });
    await client.next("pong");
    return { client, nodeId: cluster.nodes[index]?.id ?? "?" };
  }

  it("passes /health and /ready through nginx, and keeps /metrics internal", async () => {
    const health = await httpGet(`https://127.0.0.1:${cluster.port}/health`, cluster.ca);
    expect(health.status).toBe(200);
    expect(health.headers["server"]).toBe("nginx");
    expect(health.body).toMatchObject({ status: "ok", connections: expect.any(Number) });
    // HSTS on every answer of the TLS server.
    expect(health.headers["strict-transport-security"]).toBe("max-age=63072000");

    const ready = await httpGet(`https://127.0.0.1:${cluster.port}/ready`, cluster.ca);
    expect(ready.status).toBe(200);
    expect(ready.body).toMatchObject({ status: "ready" });

    // Per-node metrics are scraped from the nodes directly, never through the public edge.
    expect((await httpGet(`https://127.0.0.1:${cluster.port}/metrics`, cluster.ca)).status).toBe(
      404,
    );
    expect((await httpGet(`${cluster.nodes[0]?.url}/metrics`)).status).toBe(200);
  });

  it("refuses a missing or forged token with HTTP 401 through nginx", async () => {
    const refusal = (url: string) =>
      TestClient.connect(url, { ca: cluster.ca }).then(
        () => undefined,
        (error: unknown) => error,
      );
    const missing = await refusal(cluster.endpoint);
    expect(missing).toBeInstanceOf(UpgradeRefused);
    expect((missing as UpgradeRefused).status).toBe(401);

    const forged = await mintToken({ sub: "mallory", secret: "not-the-cluster-secret" });
    const wrong = await refusal(`${cluster.endpoint}?token=${forged}`);
    expect((wrong as UpgradeRefused).status).toBe(401);
  });

  it("delivers direct messages between clients on different nodes", async () => {
    const alice = await connectVia("alice");
    // least_conn sends the next socket to another node; connect more only if it did not.
    let bob = await connectVia("bob");
    for (let attempt = 1; bob.nodeId === alice.nodeId && attempt < 6; attempt += 1) {
      await bob.client.close();
      bob = await connectVia("bob");
    }
    expect(bob.nodeId).not.toBe(alice.nodeId);

    alice.client.send({ type: "direct_message", to: "bob", content: `hi from ${alice.nodeId}` });
    const ack = await alice.client.next("message_ack", 5_000);
    expect(ack).toMatchObject({ to: "bob", status: "delivered" });
    const toBob = await bob.client.next("direct_message", 5_000);
    expect(toBob["message"]).toMatchObject({ from: "alice", content: `hi from ${alice.nodeId}` });

    bob.client.send({ type: "direct_message", to: "alice", content: `hi from ${bob.nodeId}` });
    expect(await bob.client.next("message_ack", 5_000)).toMatchObject({
      to: "alice",
      status: "delivered",
    });
    const toAlice = await alice.client.next("direct_message", 5_000);
    expect(toAlice["message"]).toMatchObject({ from: "bob", content: `hi from ${bob.nodeId}` });
  });

  it("moves clients of a draining node to the others (close 1012, reconnect through nginx)", async () => {
    const carol = await connectVia("carol");
    const closed = carol.client.closed;
    await cluster.stopNode(carol.nodeId);
    expect((await closed).code).toBe(1012);

    // nginx skips the stopped node (connection refused → next upstream) without a client retry.
    for (let i = 0; i < 3; i += 1) {
      const again = await TestClient.connect(`${cluster.endpoint}?token=${await token("carol")}`, {
        ca: cluster.ca,
      });
      clients.push(again);
      again.send({ type: "ping" });
      expect((await again.next("pong")).type).toBe("pong");
    }
    const ready = await httpGet(`https://127.0.0.1:${cluster.port}/ready`, cluster.ca);
    expect(ready.status).toBe(200);
  });
});

describe.skipIf(!redis)("nginx's per-address limits", () => {
  let cluster: Cluster;
  const clients: TestClient[] = [];

  beforeAll(async () => {
    if (!redis) return;
    cluster = await startCluster({
      nodes: 1,
      port: await freePort(),
      redisUrl: redis.url,
      keyPrefix: `${redis.prefix}limits:`,
      jwtSecret: secret,
      build: false,
      env: { LOG_LEVEL: "warn", SHUTDOWN_TIMEOUT_MS: "2000" },
      // Tiny limits, to see them: two sockets per address; one request a second, five at once.
      limitConnPerAddr: 2,
      limitReqPerSecond: 1,
      limitReqBurst: 4,
    });
  }, 60_000);

  afterAll(async () => {
    await Promise.all(clients.map((client) => client.close()));
    await cluster?.stop();
  }, 60_000);

  const connect = async (userId: string) => {
    const client = await TestClient.connect(`${cluster.endpoint}?token=${await token(userId)}`, {
      ca: cluster.ca,
    });
    clients.push(client);
    return client;
  };

  it("refuses a third open WebSocket from one address with 429", async () => {
    await connect("dora");
    await connect("dora");
    // Three requests so far: within the burst, so this refusal is the connection limit's.
    const third = await connect("dora").then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(third).toBeInstanceOf(UpgradeRefused);
    expect((third as UpgradeRefused).status).toBe(429);
  });

  it("refuses requests over the rate and its burst with 429", async () => {
    const statuses = await Promise.all(
      Array.from({ length: 10 }, () =>
        httpGet(`https://127.0.0.1:${cluster.port}/health`, cluster.ca).then((r) => r.status),
      ),
    );
    expect(statuses.filter((status) => status === 429).length).toBeGreaterThanOrEqual(4);
    expect(statuses.every((status) => status === 200 || status === 429)).toBe(true);
  });
});

// `pnpm cluster --redis-cluster`: the same topology on a local Redis Cluster (3 masters with a
// replica each) that startCluster creates itself; the nodes get REDIS_CLUSTER_NODES.
const hasRedisCli = spawnSync("redis-cli", ["--version"]).status === 0;
if (hasNginx && !hasRedisCli) {
  const why = "redis-cli is not on PATH (apt-get install -y redis-tools)";
  if (process.env["CI"] === "true") throw new Error(`${why}; under CI=true this is a failure.`);
  console.warn(`\n⚠️  SKIPPING the Redis Cluster end-to-end test: ${why}.\n`);
}

describe.skipIf(!hasNginx || !hasRedisCli)("cluster through nginx on a Redis Cluster", () => {
  let cluster: Cluster | undefined;
  const clients: TestClient[] = [];

  beforeAll(async () => {
    cluster = await startCluster({
      nodes: 2,
      port: await freePort(),
      redisCluster: true,
      jwtSecret: secret,
      build: false,
      env: { LOG_LEVEL: "warn", SHUTDOWN_TIMEOUT_MS: "5000" },
    });
  }, 90_000);

  afterAll(async () => {
    await Promise.all(clients.map((client) => client.close()));
    await cluster?.stop();
  }, 60_000);

  it("starts six redis-servers as a cluster and delivers a direct message through nginx", async () => {
    if (!cluster) throw new Error("unreachable");
    expect(cluster.redisClusterNodes?.split(",")).toHaveLength(6);
    const connect = async (userId: string) => {
      const client = await TestClient.connect(`${cluster?.endpoint}?token=${await token(userId)}`, {
        ca: cluster?.ca,
      });
      clients.push(client);
      client.send({ type: "ping" });
      await client.next("pong");
      return client;
    };
    const bob = await connect("bob");
    const alice = await connect("alice");
    alice.send({
      type: "direct_message",
      to: "bob",
      content: "over Redis Cluster",
      clientMsgId: "c1",
    });
    const received = (await bob.next("direct_message"))["message"];
    expect(received).toMatchObject({ from: "alice", content: "over Redis Cluster", seq: 1 });
    expect(await alice.next("message_ack")).toMatchObject({ status: "delivered", seq: 1 });
  }, 30_000);
});
