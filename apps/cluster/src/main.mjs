#!/usr/bin/env node
// `pnpm cluster`: the docker-compose topology from local processes, in the foreground.
// Ctrl-C (SIGINT) or SIGTERM stops everything it started; a child that dies on its own stops the
// rest and makes this exit 1. See docs/deployment.md.

import { ChildExitError, CLUSTER_DEFAULTS, startCluster } from "./cluster.mjs";

const HELP = `Usage: pnpm cluster [--redis-cluster]

Starts Redis (unless REDIS_URL is set), CLUSTER_NODES Mrezhen nodes and nginx terminating TLS in
front of them, all on 127.0.0.1, and stays in the foreground until Ctrl-C.

  --redis-cluster    start a Redis Cluster (3 masters, 3 replicas) instead of one redis-server;
                     the nodes get REDIS_CLUSTER_NODES (needs redis-cli too)

Environment:
  CLUSTER_NODES      number of nodes (default ${CLUSTER_DEFAULTS.nodes})
  CLUSTER_PORT       wss port of nginx (default ${CLUSTER_DEFAULTS.port}; 0 = any free port)
  REDIS_URL          use this Redis instead of starting a throwaway redis-server
  REDIS_KEY_PREFIX   key prefix of this cluster (default "${CLUSTER_DEFAULTS.keyPrefix}")
  JWT_SECRET         passed to every node (default: the nodes' development secret)
  CLUSTER_TLS_CERT   PEM certificate for nginx (default: a self-signed one for localhost)
  CLUSTER_TLS_KEY    its private key
  CLUSTER_BUILD=0    skip the build (default: \`pnpm --silent build\` first, quick when up to date)
  CLUSTER_QUIET=1    do not echo the processes' output
  NGINX_BIN          nginx binary (default ${CLUSTER_DEFAULTS.nginxBin})
  REDIS_SERVER_BIN   redis-server binary (default ${CLUSTER_DEFAULTS.redisServerBin}, from PATH)
  CLUSTER_LIMIT_CONN_PER_ADDR   nginx: open connections per client address (default ${CLUSTER_DEFAULTS.limitConnPerAddr})
  CLUSTER_LIMIT_REQ_PER_SECOND  nginx: requests per second per client address (default ${CLUSTER_DEFAULTS.limitReqPerSecond})
  CLUSTER_LIMIT_REQ_BURST       nginx: requests over that rate served at once (default ${CLUSTER_DEFAULTS.limitReqBurst})
                     Every local client is 127.0.0.1: raise these for a load test through nginx.
  Anything else (LOG_LEVEL, RATE_LIMIT_MESSAGES, SHUTDOWN_TIMEOUT_MS, ...) reaches the nodes as is.
`;

function intFromEnv(name) {
  const raw = process.env[name];
  if (raw === undefined || raw === "") return undefined;
  const value = Number(raw);
  if (!Number.isInteger(value)) {
    console.error(`${name} must be an integer, got "${raw}"`);
    process.exit(2);
  }
  return value;
}

async function main() {
  if (process.argv.includes("--help") || process.argv.includes("-h")) {
    process.stdout.write(HELP);
    return 0;
  }
  const quiet = process.env.CLUSTER_QUIET === "1";
  const width = 8;
  const log = quiet
    ? undefined
    : (source, line) => process.stdout.write(`${`[${source}]`.padEnd(width)} ${line}\n`);

  // Signals are handled from the first moment: a Ctrl-C while starting stops what was started.
  const abort = new AbortController();
  let stopRequested;
  const stopSignal = new Promise((resolve) => {
    stopRequested = resolve;
  });
  let signals = 0;
  const onSignal = (signal) => {
    signals += 1;
    if (signals > 1) {
      // A second Ctrl-C: do not wait for draining. The exit hook SIGKILLs what is left.
      console.error(`\n${signal} again: killing everything now.`);
      process.exit(130);
    }
    console.error(`\n${signal}: stopping the cluster (nodes drain first; Ctrl-C again to kill)...`);
    abort.abort();
    stopRequested(signal);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  let cluster;
  try {
    cluster = await startCluster({
      nodes: intFromEnv("CLUSTER_NODES"),
      port: intFromEnv("CLUSTER_PORT"),
      redisUrl: process.env.REDIS_URL || undefined,
      redisCluster: process.argv.includes("--redis-cluster"),
      keyPrefix: process.env.REDIS_KEY_PREFIX || undefined,
      jwtSecret: process.env.JWT_SECRET || undefined,
      tlsCert: process.env.CLUSTER_TLS_CERT || undefined,
      tlsKey: process.env.CLUSTER_TLS_KEY || undefined,
      build: process.env.CLUSTER_BUILD !== "0",
      nginxBin: process.env.NGINX_BIN || undefined,
      redisServerBin: process.env.REDIS_SERVER_BIN || undefined,
      limitConnPerAddr: intFromEnv("CLUSTER_LIMIT_CONN_PER_ADDR"),
      limitReqPerSecond: intFromEnv("CLUSTER_LIMIT_REQ_PER_SECOND"),
      limitReqBurst: intFromEnv("CLUSTER_LIMIT_REQ_BURST"),
      log,
      signal: abort.signal,
    });
  } catch (error) {
    if (abort.signal.aborted) return 0;
    console.error(`\nThe cluster did not start: ${error instanceof Error ? error.message : error}`);
    return 1;
  }

  const nodeLines = cluster.nodes
    .map((node) => `  ${node.id.padEnd(9)} ${node.url}  (pid ${node.pid}; /health /ready /metrics)`)
    .join("\n");
  const redis = cluster.redisClusterNodes
    ? `Redis Cluster ${cluster.redisClusterNodes}  (3 masters + 3 replicas, started here, nothing persisted)`
    : cluster.redisStarted
      ? `${cluster.redisUrl}  (started here, nothing persisted)`
      : `${cluster.redisUrl}  (REDIS_URL)`;
  process.stdout.write(`
Mrezhen cluster ready: ${cluster.nodes.length} nodes behind nginx, sharing Redis.
  endpoint  ${cluster.endpoint}
  health    ${cluster.httpsUrl}/health   ${cluster.ca ? "(self-signed certificate: curl -k)" : ""}
${nodeLines}
  redis     ${redis}  prefix "${cluster.keyPrefix}"
  nginx     pid ${cluster.nginx.pid}, access log ${cluster.nginx.accessLog}
  demo      ${cluster.httpsUrl}/

A token:    node apps/server/dist/cli/token.js alice Alice   (same JWT_SECRET as the nodes)
Connect:    npx wscat --no-check -c "${cluster.endpoint}?token=$(node apps/server/dist/cli/token.js alice)"
Ctrl-C stops everything.
`);

  const outcome = await Promise.race([
    stopSignal.then((signal) => ({ signal })),
    cluster.exited.then((exit) => ({ exit })),
  ]);
  if (outcome.exit) {
    console.error(
      `\n${new ChildExitError(outcome.exit).message}\nStopping the rest of the cluster.`,
    );
  }
  await cluster.stop();
  console.error("Cluster stopped.");
  return outcome.exit ? 1 : 0;
}

process.exitCode = await main();
