// What a bench run measures: the scenarios, their parameters and the systems under test.
import { fileURLToPath } from "node:url";

/** Every scenario, in the order the load generator runs them (storm and scale last, by themselves). */
export const SCENARIOS = [
  "idle",
  "connect",
  "single-node",
  "latency",
  "fixed",
  "cluster",
  "cluster-fixed",
  "groups",
  "storm",
  "scale",
];
/**
 * What runs without --scenarios: the storm and scale scenarios have nodes and clients of their
 * own, and `fixed` (the latency scenario at several rates) and `cluster-fixed` (the cluster at
 * 5,000 msgs/s) take a few minutes, so only on request.
 */
export const DEFAULT_SCENARIOS = SCENARIOS.filter(
  (s) => s !== "storm" && s !== "scale" && s !== "fixed" && s !== "cluster-fixed",
);

/** Which systems a scenario compares. */
export const TOPOLOGY = {
  idle: "single",
  connect: "single",
  "single-node": "single",
  latency: "single",
  fixed: "single",
  cluster: "cluster",
  "cluster-fixed": "cluster",
  groups: "cluster",
  storm: "storm",
  scale: "scale",
};

export const SYSTEMS = ["mrezhen", "ws-ack", "ws-min", "socket.io"];
/** The peers Mrezhen's figures are divided by, in the ratio table (mrezhen-base with --baseline). */
export const PEER_SYSTEMS = [...SYSTEMS.filter((s) => s !== "mrezhen"), "mrezhen-base"];

/** Scenario parameters; `--quick` trades cycles, slice length and idle count for time. */
export function parameters({ quick, cycles, rates, storm = {}, scale = {} }) {
  return {
    // scale: N idle connections over K nodes (client processes as in the storm: stormWorkers,
    // stormConcurrency), scaleKilledClients of them on the node that is then killed (default: an
    // even share), presence mode of every connection; steady load during the reconnect storm:
    // scaleSteadyPairs pairs, one DM per pair every scaleSteadyIntervalMs, measured for
    // scaleBeforeMs before the kill; the storm is waited for at most scaleStormWaitMs.
    scaleConnections: scale.connections ?? (quick ? 2000 : 10_000),
    scaleNodes: scale.nodes ?? 3,
    scaleKilledClients: scale.killedClients,
    scalePresence: scale.presence ?? "contacts",
    scaleKill: scale.kill ?? true,
    scaleSteadyPairs: scale.steadyPairs ?? 10,
    scaleSteadyIntervalMs: scale.steadyIntervalMs ?? 50,
    scaleBeforeMs: scale.beforeMs ?? 10_000,
    scaleStormWaitMs: scale.stormWaitMs ?? 120_000,
    // Reconnecting clients wait a random delay up to this first (0: all at once, the worst case).
    scaleReconnectJitterMs: scale.reconnectJitterMs ?? 0,
    redisCluster: scale.redisCluster ?? false,
    // storm: N connections over K nodes on Redis, from client processes of at most 10,000 each
    // (at least stormWorkers), each from its own loopback address; stormConcurrency connects in
    // flight per client process; held stormHoldMs (two heartbeat passes) before all leave.
    stormConnections: storm.connections ?? (quick ? 2000 : 10_000),
    stormNodes: storm.nodes ?? 2,
    stormWorkers: storm.workers ?? 2,
    stormConcurrency: storm.concurrency ?? 500,
    stormHeartbeatMs: storm.heartbeatMs ?? 5000,
    stormHoldMs: storm.holdMs ?? 2 * (storm.heartbeatMs ?? 5000),
    // Measured cycles per scenario (plus one warm-up cycle that is dropped).
    cycles: cycles ?? (quick ? 3 : 5),
    // Each slice: load for warmMs unmeasured, then measureMs measured, then drain.
    warmMs: quick ? 400 : 500,
    measureMs: quick ? 1200 : 2000,
    drainMs: 10_000,
    // single-node, latency, cluster: sender→receiver pairs (two connections each).
    pairs: quick ? 500 : 1000,
    inflight: 2,
    // latency: open-loop rate; past maxOutstanding undelivered messages, sends are shed.
    rate: 10_000,
    maxOutstanding: 10_000,
    // fixed: the latency scenario at each of these rates (msgs/s), below saturation, where every
    // message is its own I/O event and nothing is amortised.
    rates: rates ?? [2000, 10_000, 20_000],
    // cluster-fixed: the two-node systems at a fixed rate, every message crossing nodes.
    clusterRate: 5000,
    // groups: the two-node systems; groups of each of groupSizes members (groupUsers connections
    // in all per size: 100 groups of 10, 10 of 100), members alternating between the nodes, one
    // sender per group at saturation; then one group of largeGroup members at groupRate msgs/s,
    // measured for groupMeasureMs (the sender's ack latency and, for Mrezhen, SLOWLOG entries
    // over slowlogThresholdUs).
    groupSizes: [10, 100],
    groupUsers: quick ? 500 : 1000,
    largeGroup: quick ? 200 : 1000,
    groupRate: 10,
    groupMeasureMs: quick ? 3000 : 10_000,
    slowlogThresholdUs: 500,
    // connect and idle: connects in flight at once; connect cycles over connectUsers users.
    connectConcurrency: 50,
    connectUsers: 1000,
    idleConnections: quick ? 1000 : 10_000,
    idleConnectMs: quick ? 20_000 : 60_000,
  };
}

const repo = (path) => fileURLToPath(new URL(`../../${path}`, import.meta.url));

export const MREZHEN_MAIN = repo("apps/server/dist/main.js");
const WS_ACK = repo("bench/src/peers/ws-ack.mjs");
const WS_MIN = repo("bench/src/peers/ws-min.mjs");
const SOCKET_IO = repo("bench/src/peers/socketio.mjs");
/** The peers' server scripts, by system name. */
export const PEERS = { "ws-ack": WS_ACK, "ws-min": WS_MIN, "socket.io": SOCKET_IO };

/**
 * The systems under test and the server processes each is made of. `env` is what the bench sets on
 * top of the common server environment (port, JWT, log level).
 */
export function systemsUnderTest({ runId, redisUrl, baseline }) {
  const mrezhenEnv = {
    // The rate limit must never be what is measured.
    RATE_LIMIT_MESSAGES: "1000000000",
    RATE_LIMIT_WINDOW_MS: "60000",
  };
  const mrezhenNode = (name, env) => ({
    name,
    script: MREZHEN_MAIN,
    env: { ...mrezhenEnv, ...env },
  });
  const redisMrezhen = (nodeId) =>
    mrezhenNode(`mrezhen-${nodeId}`, {
      REDIS_URL: redisUrl,
      REDIS_KEY_PREFIX: `mrezhen-bench-${runId}:`,
      NODE_ID: `bench-${nodeId}`,
    });
  const sioRedis = { REDIS_URL: redisUrl, SIO_REDIS_KEY: `sio-bench-${runId}` };
  // --baseline: another build of Mrezhen (a base commit's apps/server/dist/main.js), run beside
  // this one as one more system, so that a change is measured in paired slices too.
  const base =
    baseline === undefined
      ? []
      : [
          {
            id: "mrezhen-base",
            system: "mrezhen-base",
            topology: "single",
            engine: "memory",
            protocol: "part-a",
            nodes: [{ ...mrezhenNode("mrezhen-base", {}), script: baseline }],
          },
          {
            id: "mrezhen-base-cluster",
            system: "mrezhen-base",
            topology: "cluster",
            engine: "redis",
            protocol: "part-a",
            // Keys of their own (under the run's prefix, so that the clean-up finds them).
            nodes: ["a", "b"].map((id) => {
              const node = redisMrezhen(`base-${id}`);
              const env = { ...node.env, REDIS_KEY_PREFIX: `mrezhen-bench-${runId}:base:` };
              return { ...node, env, script: baseline };
            }),
          },
        ];
  return [
    {
      id: "mrezhen",
      system: "mrezhen",
      topology: "single",
      engine: "memory",
      protocol: "part-a",
      nodes: [mrezhenNode("mrezhen", {})],
    },
    ...base,
    {
      id: "ws-ack",
      system: "ws-ack",
      topology: "single",
      engine: "none",
      protocol: "part-a",
      nodes: [{ name: "ws-ack", script: WS_ACK, env: {} }],
    },
    {
      id: "ws-min",
      system: "ws-min",
      topology: "single",
      engine: "none",
      protocol: "part-a",
      nodes: [{ name: "ws-min", script: WS_MIN, env: {} }],
    },
    {
      id: "socket.io",
      system: "socket.io",
      topology: "single",
      engine: "in-memory adapter",
      protocol: "socket.io",
      nodes: [{ name: "socket.io", script: SOCKET_IO, env: {} }],
    },
    {
      id: "mrezhen-cluster",
      system: "mrezhen",
      topology: "cluster",
      engine: "redis",
      protocol: "part-a",
      nodes: [redisMrezhen("a"), redisMrezhen("b")],
    },
    {
      id: "socket.io-cluster",
      system: "socket.io",
      topology: "cluster",
      engine: "redis adapter",
      protocol: "socket.io",
      nodes: [
        { name: "socket.io-a", script: SOCKET_IO, env: sioRedis },
        { name: "socket.io-b", script: SOCKET_IO, env: sioRedis },
      ],
    },
  ];
}
