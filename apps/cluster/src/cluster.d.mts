// Types of cluster.mjs (plain ESM so that it runs before the build; see there).

export declare const REPO_ROOT: string;
export declare const NGINX_TEMPLATE_DIR: string;

export declare const CLUSTER_DEFAULTS: Readonly<{
  nodes: number;
  port: number;
  keyPrefix: string;
  nodeIdPrefix: string;
  nginxBin: string;
  redisServerBin: string;
  opensslBin: string;
  build: boolean;
  serverEntry: string;
  readyTimeoutMs: number;
  stopTimeoutMs: number;
  keepDir: boolean;
  limitConnPerAddr: number;
  limitReqPerSecond: number;
  limitReqBurst: number;
}>;

export interface ClusterOptions {
  /** Number of nodes, 1..64 (default 3). */
  readonly nodes?: number | undefined;
  /** Port nginx serves wss on, on 127.0.0.1 (default 8443; 0 picks a free one). */
  readonly port?: number | undefined;
  /** A running Redis to use; when absent a throwaway redis-server is started. */
  readonly redisUrl?: string | undefined;
  /**
   * Start a throwaway Redis Cluster (6 redis-servers: 3 masters, 3 replicas) and give the nodes
   * REDIS_CLUSTER_NODES instead of REDIS_URL (`pnpm cluster --redis-cluster`).
   */
  readonly redisCluster?: boolean | undefined;
  readonly redisCliBin?: string | undefined;
  /** REDIS_KEY_PREFIX of every node (default "mrezhen:"). */
  readonly keyPrefix?: string | undefined;
  /** NODE_ID of node i is `${nodeIdPrefix}${i}` (default "node"). */
  readonly nodeIdPrefix?: string | undefined;
  /** JWT_SECRET of every node; when absent the nodes use their own default. */
  readonly jwtSecret?: string | undefined;
  /** Certificate and key for nginx; when absent a self-signed one for localhost is generated. */
  readonly tlsCert?: string | undefined;
  readonly tlsKey?: string | undefined;
  /** Extra environment for the nodes (WS_PORT, HOST, NODE_ID, REDIS_* are set by the cluster). */
  readonly env?: Readonly<Record<string, string>> | undefined;
  /** Run `pnpm --silent build` first (default true). */
  readonly build?: boolean | undefined;
  /** The node's entry point, relative to the repository root (default apps/server/dist/main.js). */
  readonly serverEntry?: string | undefined;
  readonly nginxBin?: string | undefined;
  readonly redisServerBin?: string | undefined;
  readonly opensslBin?: string | undefined;
  /** How long each process may take to become ready (default 60 s). */
  readonly readyTimeoutMs?: number | undefined;
  /** How long stop() waits after SIGTERM before SIGKILL, per process (default 20 s). */
  readonly stopTimeoutMs?: number | undefined;
  /** Keep the run directory (configs, certificate, access log) after stop(). */
  readonly keepDir?: boolean | undefined;
  /** nginx: open connections per client address (default 256; every local client is 127.0.0.1). */
  readonly limitConnPerAddr?: number | undefined;
  /** nginx: requests (handshakes included) per second per client address (default 20). */
  readonly limitReqPerSecond?: number | undefined;
  /** nginx: requests over that rate served at once (default 200). */
  readonly limitReqBurst?: number | undefined;
  /** Every output line of every process; default: none (tails are kept for errors either way). */
  readonly log?: ((source: string, line: string) => void) | undefined;
  /** Aborting stops a start in progress. */
  readonly signal?: AbortSignal | undefined;
}

export interface ClusterNode {
  /** Its NODE_ID. */
  readonly id: string;
  readonly port: number;
  readonly pid: number | undefined;
  /** Direct (plain HTTP, loopback) URL of the node, bypassing nginx. */
  readonly url: string;
}

export interface ChildExit {
  readonly name: string;
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly error?: string | undefined;
  /** The last output lines of that process. */
  readonly tail: string;
}

export interface Cluster {
  /** `wss://localhost:<port>/ws` */
  readonly endpoint: string;
  /** `https://localhost:<port>` */
  readonly httpsUrl: string;
  readonly port: number;
  readonly nodes: readonly ClusterNode[];
  readonly nginx: { readonly pid: number | undefined; readonly accessLog: string };
  readonly redisUrl: string;
  /** REDIS_CLUSTER_NODES of the nodes, with redisCluster; undefined otherwise. */
  readonly redisClusterNodes: string | undefined;
  /** Whether the cluster started its own redis-server. */
  readonly redisStarted: boolean;
  readonly keyPrefix: string;
  /** The self-signed certificate (PEM) to trust, when the cluster generated it. */
  readonly ca: string | undefined;
  /** The run directory (rendered nginx config, certificate, access log). */
  readonly dir: string;
  /** Settles when a process dies while the cluster runs (never after stop()). */
  readonly exited: Promise<ChildExit>;
  /** The last output lines of one process (`node1`, `nginx`, `redis`), or of all. */
  logTail(name?: string): string;
  /**
   * SIGTERMs one node on purpose and waits for it to exit (it drains: clients get close 1012);
   * the others keep serving. Resolves with how it exited.
   */
  stopNode(id: string): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Stops everything, nodes first (SIGTERM: they drain). Idempotent. */
  stop(): Promise<void>;
}

export declare class ChildExitError extends Error {
  constructor(exit: ChildExit);
  readonly exit: ChildExit;
}

export declare function startCluster(options?: ClusterOptions): Promise<Cluster>;

export declare function renderTemplate(
  text: string,
  values: Readonly<Record<string, string>>,
): string;

export declare function freePort(): Promise<number>;

export declare function httpGet(
  url: string,
  ca?: string,
): Promise<{
  status: number;
  body: unknown;
  headers: Record<string, string | string[] | undefined>;
}>;
