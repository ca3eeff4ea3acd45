// The local cluster: the docker-compose topology (Redis, N nodes, nginx terminating TLS) started
// from local processes, for development and for the end-to-end test. `pnpm cluster` is the CLI
// (main.mjs); this module is the core, so a test can start and stop the same thing.
//
// Plain Node ESM with no dependencies on purpose: it must run before anything is built (it runs
// the build), and it needs nothing beyond node:*. Types are in cluster.d.mts.

import { spawn } from "node:child_process";
import { constants as fsConstants } from "node:fs";
import { access, chmod, mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import http from "node:http";
import https from "node:https";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

/** The repository root (this file is apps/cluster/src/cluster.mjs). */
export const REPO_ROOT = fileURLToPath(new URL("../../../", import.meta.url));

/** The one nginx configuration of the project, shared with docker-compose.yml. */
export const NGINX_TEMPLATE_DIR = path.join(REPO_ROOT, "nginx");

/** Defaults in one place; every option of {@link startCluster} falls back to these. */
export const CLUSTER_DEFAULTS = Object.freeze({
  nodes: 3,
  port: 8443,
  keyPrefix: "mrezhen:",
  nodeIdPrefix: "node",
  nginxBin: "/usr/sbin/nginx",
  redisServerBin: "redis-server",
  redisCliBin: "redis-cli",
  // Start a local Redis Cluster (3 masters, 3 replicas) instead of one redis-server.
  redisCluster: false,
  opensslBin: "openssl",
  build: true,
  // What each node runs (relative to the repository root), as in the Dockerfile's CMD.
  serverEntry: "apps/server/dist/main.js",
  readyTimeoutMs: 60_000,
  // Above the node's own drain deadline (SHUTDOWN_TIMEOUT_MS), so a node that drains normally is
  // never SIGKILLed; a node that hangs past it is.
  stopTimeoutMs: 20_000,
  keepDir: false,
  // nginx's per-address limits (nginx/mrezhen.conf.template), as in docker-compose.yml. Every
  // local client comes from 127.0.0.1, so a load test through the cluster raises them.
  limitConnPerAddr: 256,
  limitReqPerSecond: 20,
  limitReqBurst: 200,
});

const MAX_NODES = 64;

/**
 * A tiny guardian process. The children run in their own process groups (so that a terminal's
 * Ctrl-C reaches only the cluster, which then stops them in order), which also means nothing
 * stops them if the cluster process is SIGKILLed or crashes hard (a killed test runner, say).
 * The watchdog reads `+pid` / `-pid` lines on stdin; when stdin closes without a `done` line,
 * its parent is gone, and it SIGTERMs what is left, SIGKILLs it after the grace period, and
 * removes the run directory (`dir <path>` line) unless told to keep it.
 */
const WATCHDOG = `
const grace = Number(process.argv[1]);
const pids = new Set();
let rest = "", done = false, dir;
process.on("SIGINT", () => {});
process.stdin.setEncoding("utf8");
process.stdin.on("data", (chunk) => {
  const lines = (rest + chunk).split("\\n");
  rest = lines.pop();
  for (const line of lines) {
    if (line === "done") done = true;
    else if (line.startsWith("dir ")) dir = line.slice(4);
    else if (line[0] === "+") pids.add(Number(line.slice(1)));
    else if (line[0] === "-") pids.delete(Number(line.slice(1)));
  }
});
const signal = (name) => {
  for (const pid of pids) {
    try { process.kill(pid, name); } catch { pids.delete(pid); }
  }
};
const finish = () => {
  if (dir) require("node:fs").rmSync(dir, { recursive: true, force: true });
  process.exit(0);
};
process.stdin.on("end", () => {
  if (done) process.exit(0);
  signal("SIGTERM");
  const deadline = Date.now() + grace;
  setInterval(() => {
    signal(0);
    if (pids.size === 0) finish();
    if (Date.now() > deadline) { signal("SIGKILL"); finish(); }
  }, 100);
});
`;

const TAIL_LINES = 200;

/** How to install what is missing, per binary. */
const INSTALL_HINTS = {
  nginx:
    "install nginx (Debian/Ubuntu: `apt-get install -y --no-install-recommends nginx`; the " +
    "cluster runs its own nginx process, so the system service can stay stopped) or set NGINX_BIN",
  "redis-server":
    "install Redis (Debian/Ubuntu: `apt-get install -y redis-server`), or point REDIS_URL at a " +
    "running Redis, or set REDIS_SERVER_BIN",
  "redis-cli":
    "install redis-cli (Debian/Ubuntu: `apt-get install -y redis-tools`), or set REDIS_CLI_BIN",
  openssl:
    "install openssl (Debian/Ubuntu: `apt-get install -y openssl`), or bring a certificate with " +
    "CLUSTER_TLS_CERT and CLUSTER_TLS_KEY",
  pnpm: "install pnpm (`npm i -g pnpm@12.4.2`), or build first and set CLUSTER_BUILD=0",
};

/** A child process died while the cluster was supposed to be running. */
export class ChildExitError extends Error {
  constructor(exit) {
    const how = exit.signal ? `signal ${exit.signal}` : `code ${exit.code}`;
    const tail = exit.tail ? `\n--- last output of ${exit.name} ---\n${exit.tail}` : "";
    super(`${exit.name} exited unexpectedly (${how})${exit.error ? `: ${exit.error}` : ""}${tail}`);
    this.name = "ChildExitError";
    this.exit = exit;
  }
}

/**
 * Renders a template of nginx/: replaces every `${MREZHEN_NAME}` with `values.MREZHEN_NAME`, the
 * same substitution the nginx image's entrypoint does for docker-compose. Nothing else is touched
 * (nginx's own `$variables` are lower-case). A placeholder without a value is an error, not an
 * empty string: a half-rendered config must not reach nginx.
 *
 * @example
 * renderTemplate("listen ${MREZHEN_LISTEN} ssl;", { MREZHEN_LISTEN: "127.0.0.1:8443" })
 * // → "listen 127.0.0.1:8443 ssl;"
 */
export function renderTemplate(text, values) {
  const missing = new Set();
  const rendered = text.replace(/\$\{(MREZHEN_[A-Z0-9_]+)\}/g, (_match, name) => {
    const value = values[name];
    if (value === undefined) missing.add(name);
    return value ?? "";
  });
  if (missing.size > 0)
    throw new Error(`no value for template placeholder(s): ${[...missing].join(", ")}`);
  // The image's entrypoint also substitutes the brace-less form; ours would leave it in place.
  const bare = /\$MREZHEN_[A-Z0-9_]+/.exec(rendered);
  if (bare) throw new Error(`write placeholders as \${NAME}, found ${bare[0]}`);
  return rendered;
}

/**
 * Starts Redis (unless `redisUrl` is given), `nodes` Mrezhen nodes and nginx in front of them, and
 * resolves once every node's /ready answers 200 and nginx answers /ready over TLS. Every process it
 * started is stopped again if starting fails; `stop()` stops them in order (nodes first, with
 * SIGTERM so they drain, then nginx, then Redis).
 *
 * @example
 * const cluster = await startCluster({ nodes: 2, port: 0, redisUrl: process.env.REDIS_URL });
 * try { console.log(cluster.endpoint); } finally { await cluster.stop(); }
 */
export async function startCluster(options = {}) {
  const config = resolveOptions(options);
  const cluster = new LocalCluster(config);
  const onAbort = () => void cluster.stop();
  config.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    await cluster.start();
  } catch (error) {
    await cluster.stop();
    throw config.signal?.aborted ? new Error("cluster start aborted", { cause: error }) : error;
  } finally {
    config.signal?.removeEventListener("abort", onAbort);
  }
  return cluster.handle();
}

function resolveOptions(options) {
  const config = { ...CLUSTER_DEFAULTS, ...dropUndefined(options) };
  if (!Number.isInteger(config.nodes) || config.nodes < 1 || config.nodes > MAX_NODES) {
    throw new RangeError(
      `nodes must be an integer 1..${MAX_NODES}, got ${config.nodes} (CLUSTER_NODES)`,
    );
  }
  if (!Number.isInteger(config.port) || config.port < 0 || config.port > 65_535) {
    throw new RangeError(
      `port must be an integer 0..65535 (0 = any free port), got ${config.port} (CLUSTER_PORT)`,
    );
  }
  for (const name of ["limitConnPerAddr", "limitReqPerSecond", "limitReqBurst"]) {
    if (!Number.isInteger(config[name]) || config[name] < 1) {
      throw new RangeError(`${name} must be a whole number of at least 1, got ${config[name]}`);
    }
  }
  if ((config.tlsCert === undefined) !== (config.tlsKey === undefined)) {
    throw new Error("give both tlsCert and tlsKey (CLUSTER_TLS_CERT, CLUSTER_TLS_KEY), or neither");
  }
  return config;
}

class LocalCluster {
  constructor(config) {
    this.config = config;
    this.log = config.log ?? (() => {});
    /** Name → { name, child, exited, expectedExit, exit: { code, signal }, done: Promise }. */
    this.children = new Map();
    this.tails = new Map();
    this.stopping = false;
    this.stopped = undefined;
    this.nodes = [];
    this.dir = undefined;
    let onDeath;
    this.death = new Promise((resolve) => {
      onDeath = resolve;
    });
    this.onDeath = onDeath;
    let onStop;
    this.stopRequested = new Promise((resolve) => {
      onStop = resolve;
    });
    this.onStop = onStop;
    // Children live in their own process groups (so a terminal's Ctrl-C reaches only us and we stop
    // them in order). If this process exits without stop(), take them down with it; if it dies
    // without even running exit handlers, the watchdog does.
    this.watchdog = spawn(process.execPath, ["-e", WATCHDOG, String(config.stopTimeoutMs)], {
      stdio: ["pipe", "ignore", "inherit"],
    });
    this.watchdog.stdin.on("error", () => {}); // it is gone: nothing left to tell it
    this.onProcessExit = () => {
      for (const { child, exited } of this.children.values()) {
        if (!exited) child.kill("SIGKILL");
      }
    };
    process.on("exit", this.onProcessExit);
  }

  async start() {
    const c = this.config;
    await requireBinary(c.nginxBin, "nginx");
    if (!c.redisUrl) await requireBinary(c.redisServerBin, "redis-server");
    if (c.redisCluster) await requireBinary(c.redisCliBin, "redis-cli");
    if (!c.tlsCert) await requireBinary(c.opensslBin, "openssl");

    this.dir = await mkdtemp(path.join(os.tmpdir(), "mrezhen-cluster-"));
    // nginx workers run as an unprivileged user when we are root and must reach their temp dirs.
    await chmod(this.dir, 0o755);
    if (!c.keepDir) this.watchdog.stdin.write(`dir ${this.dir}\n`);

    const port = c.port === 0 ? await freePort() : await assertPortFree(c.port);
    this.port = port;

    // `pnpm --silent build`, not `pnpm -s build`: pnpm 12 takes no short flags before a command.
    if (c.build) await this.run("build", "pnpm", ["--silent", "build"], { hintKey: "pnpm" });
    const main = path.resolve(REPO_ROOT, c.serverEntry);
    if (!(await exists(main))) throw new Error(`${main} is missing: run \`pnpm build\` first`);

    const tls = await this.prepareTls();
    this.tls = tls;

    if (c.redisCluster) {
      await this.startRedisCluster();
    } else if (c.redisUrl) {
      this.redisUrl = c.redisUrl;
      this.redisStarted = false;
      await this.guard(this.waitFor(() => redisPing(c.redisUrl), 5_000, `Redis at ${c.redisUrl}`));
    } else {
      const redisPort = await freePort();
      const redisDir = path.join(this.dir, "redis");
      await mkdir(redisDir);
      // Throwaway data: no RDB snapshots, no AOF. docker-compose.yml is where durability is set.
      this.spawnChild("redis", c.redisServerBin, [
        "--port",
        String(redisPort),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        redisDir,
        "--daemonize",
        "no",
      ]);
      this.redisUrl = `redis://127.0.0.1:${redisPort}`;
      this.redisStarted = true;
      await this.guard(
        this.waitFor(() => redisPing(this.redisUrl), c.readyTimeoutMs, "redis-server"),
      );
    }

    const ports = await distinctFreePorts(c.nodes, [port]);
    for (const [index, nodePort] of ports.entries()) {
      const id = `${c.nodeIdPrefix}${index + 1}`;
      const env = {
        ...process.env,
        ...(c.env ?? {}),
        WS_PORT: String(nodePort),
        // Loopback only: nginx is the one entry point.
        HOST: "127.0.0.1",
        NODE_ID: id,
        ...(this.redisClusterNodes
          ? { REDIS_CLUSTER_NODES: this.redisClusterNodes, REDIS_URL: "" }
          : { REDIS_URL: this.redisUrl }),
        REDIS_KEY_PREFIX: c.keyPrefix,
      };
      if (c.jwtSecret !== undefined) env.JWT_SECRET = c.jwtSecret;
      const child = this.spawnChild(id, process.execPath, [main], env);
      this.nodes.push({ id, port: nodePort, pid: child.pid, url: `http://127.0.0.1:${nodePort}` });
    }
    await this.guard(
      Promise.all(
        this.nodes.map((node) =>
          this.waitFor(
            () => expectStatus(`${node.url}/ready`, 200),
            c.readyTimeoutMs,
            `${node.id} /ready`,
          ),
        ),
      ),
    );

    await this.startNginx(port, tls);
    await this.guard(
      this.waitFor(
        () => expectStatus(`https://127.0.0.1:${port}/ready`, 200, tls.ca),
        c.readyTimeoutMs,
        "nginx /ready",
      ),
    );
  }

  async prepareTls() {
    const c = this.config;
    if (c.tlsCert)
      return { cert: path.resolve(c.tlsCert), key: path.resolve(c.tlsKey), ca: undefined };
    const tlsDir = path.join(this.dir, "tls");
    await mkdir(tlsDir, { mode: 0o700 });
    const cert = path.join(tlsDir, "cert.pem");
    const key = path.join(tlsDir, "key.pem");
    // Self-signed, valid for the names a local client uses. P-256 is instant to generate. Its
    // progress noise is not echoed.
    await this.run(
      "openssl",
      c.opensslBin,
      [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "30",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
        "-keyout",
        key,
        "-out",
        cert,
      ],
      { echo: false },
    );
    await chmod(key, 0o600);
    return { cert, key, ca: await readFile(cert, "utf8") };
  }

  async startNginx(port, tls) {
    const runtime = path.join(this.dir, "nginx");
    await mkdir(runtime);
    const site = path.join(runtime, "mrezhen.conf");
    const main = path.join(runtime, "nginx.conf");
    const values = {
      MREZHEN_NGINX_RUNTIME_DIR: runtime,
      MREZHEN_NGINX_SITE_CONF: site,
      MREZHEN_LISTEN: `127.0.0.1:${port}`,
      // A refused connect marks a node failed for 5 s, so a dead node is skipped, not retried on
      // every handshake.
      MREZHEN_UPSTREAM_SERVERS: this.nodes
        .map((node) => `server 127.0.0.1:${node.port} max_fails=1 fail_timeout=5s;`)
        .join(" "),
      MREZHEN_TLS_CERT: tls.cert,
      MREZHEN_TLS_KEY: tls.key,
      MREZHEN_ACCESS_LOG: path.join(runtime, "access.log"),
      MREZHEN_LIMIT_CONN_PER_ADDR: String(this.config.limitConnPerAddr),
      MREZHEN_LIMIT_REQ_RATE: `${this.config.limitReqPerSecond}r/s`,
      MREZHEN_LIMIT_REQ_BURST: String(this.config.limitReqBurst),
    };
    for (const [name, target] of [
      ["nginx.conf.template", main],
      ["mrezhen.conf.template", site],
    ]) {
      const text = await readFile(path.join(NGINX_TEMPLATE_DIR, name), "utf8");
      await writeFile(target, renderTemplate(text, values));
    }
    this.nginxAccessLog = values.MREZHEN_ACCESS_LOG;
    // Foreground (`daemon off`), own prefix, errors to stderr from the first line on (`-e`).
    this.spawnChild("nginx", this.config.nginxBin, [
      "-p",
      runtime,
      "-c",
      main,
      "-e",
      "stderr",
      "-g",
      "daemon off;",
    ]);
  }

  /**
   * Runs a command to completion (build, openssl). Its output goes to the log when `echo`, and is
   * kept for the error message either way.
   */
  async run(name, command, args, { hintKey = name, echo = true } = {}) {
    const child = spawn(command, args, { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
    this.capture(name, child, echo);
    const [code, error] = await new Promise((resolve) => {
      child.once("error", (err) => resolve([null, err]));
      child.once("close", (exitCode) => resolve([exitCode, undefined]));
    });
    if (error?.code === "ENOENT")
      throw new Error(`${command} not found: ${INSTALL_HINTS[hintKey] ?? ""}`);
    if (error) throw error;
    if (code !== 0) throw new Error(`${name} failed (exit ${code}):\n${this.logTail(name)}`);
  }

  spawnChild(name, command, args, env = process.env) {
    // stop() may have run while start() awaited: start nothing it would not stop.
    if (this.stopping) throw new Error("the cluster was stopped while starting");
    const child = spawn(command, args, {
      cwd: REPO_ROOT,
      env,
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    const entry = {
      name,
      child,
      exited: false,
      expectedExit: false,
      exit: undefined,
      done: undefined,
    };
    entry.done = new Promise((resolve) => {
      const finish = (code, signal, error) => {
        if (entry.exited) return;
        entry.exited = true;
        entry.exit = { code, signal };
        resolve();
        if (!this.stopping && !entry.expectedExit) {
          this.onDeath({ name, code, signal, error: error?.message, tail: this.logTail(name) });
        }
      };
      child.once("error", (error) => finish(null, null, error));
      child.once("exit", (code, signal) => finish(code, signal, undefined));
    });
    this.children.set(name, entry);
    this.capture(name, child);
    if (child.pid !== undefined) {
      this.watchdog.stdin.write(`+${child.pid}\n`);
      entry.done.then(
        () => this.watchdog.stdin.writable && this.watchdog.stdin.write(`-${child.pid}\n`),
      );
    }
    return child;
  }

  capture(name, child, echo = true) {
    const tail = this.tails.get(name) ?? [];
    this.tails.set(name, tail);
    for (const stream of [child.stdout, child.stderr]) {
      createInterface({ input: stream, crlfDelay: Number.POSITIVE_INFINITY }).on("line", (line) => {
        tail.push(line);
        if (tail.length > TAIL_LINES) tail.shift();
        if (echo) this.log(name, line);
      });
    }
  }

  logTail(name) {
    if (name !== undefined) return (this.tails.get(name) ?? []).join("\n");
    return [...this.tails.entries()]
      .map(([source, lines]) => `--- ${source} ---\n${lines.join("\n")}`)
      .join("\n");
  }

  waitFor(check, timeoutMs, what) {
    return waitFor(check, timeoutMs, what, () => this.stopping);
  }

  /** Awaits a startup step, failing fast if a child dies or stop() is called meanwhile. */
  guard(step) {
    return Promise.race([
      step,
      this.death.then((exit) => {
        throw new ChildExitError(exit);
      }),
      this.stopRequested.then(() => {
        throw new Error("the cluster was stopped while starting");
      }),
    ]);
  }

  /**
   * Six redis-servers in cluster mode (throwaway: no persistence), joined by `redis-cli --cluster
   * create` into 3 masters with a replica each, ready once every node says cluster_state:ok.
   * The nodes get REDIS_CLUSTER_NODES (all six) instead of REDIS_URL.
   */
  async startRedisCluster() {
    const c = this.config;
    const ports = await distinctFreePorts(12, [this.port]);
    const nodes = [];
    for (let i = 0; i < 6; i++) {
      const [port, busPort] = [ports[2 * i], ports[2 * i + 1]];
      const dir = path.join(this.dir, `redis${i + 1}`);
      await mkdir(dir);
      this.spawnChild(`redis${i + 1}`, c.redisServerBin, [
        "--port",
        String(port),
        // The bus port is port + 10,000 unless set, which may be taken or past 65,535.
        "--cluster-port",
        String(busPort),
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        dir,
        "--daemonize",
        "no",
      ]);
      nodes.push(`127.0.0.1:${port}`);
    }
    for (const node of nodes) {
      await this.guard(
        this.waitFor(() => redisPing(`redis://${node}`), c.readyTimeoutMs, `redis-server ${node}`),
      );
    }
    await this.run(
      "redis-cluster",
      c.redisCliBin,
      ["--cluster", "create", ...nodes, "--cluster-replicas", "1", "--cluster-yes"],
      { hintKey: "redis-cli", echo: false },
    );
    await this.guard(
      this.waitFor(
        () => Promise.all(nodes.map((node) => clusterOk(c.redisCliBin, node))),
        c.readyTimeoutMs,
        "Redis Cluster cluster_state:ok",
      ),
    );
    this.redisClusterNodes = nodes.join(",");
    this.redisUrl = `redis-cluster://${nodes[0]}`;
    this.redisStarted = true;
  }

  stop() {
    this.stopping = true;
    this.onStop();
    this.stopped ??= this.doStop();
    return this.stopped;
  }

  async doStop() {
    const { stopTimeoutMs } = this.config;
    const byName = (predicate) =>
      [...this.children.values()].filter((entry) => predicate(entry.name));
    // Nodes first and together: SIGTERM makes each drain (close its clients with 1012, through the
    // still-running nginx) and exit. Then the edge, then the store the nodes were using.
    await Promise.all(
      byName((name) => name !== "nginx" && !name.startsWith("redis")).map((e) =>
        terminate(e, stopTimeoutMs),
      ),
    );
    await Promise.all(byName((name) => name === "nginx").map((e) => terminate(e, stopTimeoutMs)));
    await Promise.all(
      byName((name) => name.startsWith("redis")).map((e) => terminate(e, stopTimeoutMs)),
    );
    process.removeListener("exit", this.onProcessExit);
    this.watchdog.stdin.end("done\n");
    if (this.dir && !this.config.keepDir) await rm(this.dir, { recursive: true, force: true });
  }

  /** SIGTERMs one node on purpose (it drains); the rest keep running and `exited` stays quiet. */
  async stopNode(id) {
    const entry = this.children.get(id);
    if (!entry || !this.nodes.some((node) => node.id === id)) throw new Error(`no node ${id}`);
    entry.expectedExit = true;
    await terminate(entry, this.config.stopTimeoutMs);
    return entry.exit;
  }

  handle() {
    const { port, tls } = this;
    return Object.freeze({
      endpoint: `wss://localhost:${port}/ws`,
      httpsUrl: `https://localhost:${port}`,
      port,
      nodes: Object.freeze(this.nodes.map((node) => Object.freeze({ ...node }))),
      nginx: Object.freeze({
        pid: this.children.get("nginx")?.child.pid,
        accessLog: this.nginxAccessLog,
      }),
      redisUrl: this.redisUrl,
      redisClusterNodes: this.redisClusterNodes,
      redisStarted: this.redisStarted,
      keyPrefix: this.config.keyPrefix,
      ca: tls.ca,
      dir: this.dir,
      exited: this.death,
      logTail: (name) => this.logTail(name),
      stopNode: (id) => this.stopNode(id),
      stop: () => this.stop(),
    });
  }
}

/** SIGTERM, then SIGKILL after `timeoutMs`; resolves once the process is gone. */
async function terminate(entry, timeoutMs) {
  if (entry.exited) return;
  entry.child.kill("SIGTERM");
  let timer;
  const timedOut = new Promise((resolve) => {
    timer = setTimeout(() => resolve(true), timeoutMs);
  });
  const killed = await Promise.race([entry.done.then(() => false), timedOut]);
  clearTimeout(timer);
  if (killed) {
    entry.child.kill("SIGKILL");
    await entry.done;
  }
}

function dropUndefined(object) {
  return Object.fromEntries(Object.entries(object).filter(([, value]) => value !== undefined));
}

async function exists(file) {
  try {
    await access(file);
    return true;
  } catch {
    return false;
  }
}

/** Fails with an install hint when `command` (a path, or a name looked up on PATH) is missing. */
async function requireBinary(command, hintKey) {
  const candidates = command.includes("/")
    ? [command]
    : (process.env.PATH ?? "").split(path.delimiter).map((dir) => path.join(dir, command));
  for (const candidate of candidates) {
    try {
      await access(candidate, fsConstants.X_OK);
      return;
    } catch {
      // next
    }
  }
  throw new Error(`${command} not found: ${INSTALL_HINTS[hintKey]}`);
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function distinctFreePorts(count, taken) {
  const ports = new Set(taken);
  const result = [];
  while (result.length < count) {
    const port = await freePort();
    if (ports.has(port)) continue;
    ports.add(port);
    result.push(port);
  }
  return result;
}

function assertPortFree(port) {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", (error) =>
      reject(
        error.code === "EADDRINUSE"
          ? new Error(
              `port ${port} is already in use on 127.0.0.1: set CLUSTER_PORT to another one`,
            )
          : error,
      ),
    );
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(port)));
  });
}

/**
 * Retries `check` every 100 ms until it resolves, or fails with its last error after `timeoutMs`,
 * or as soon as `cancelled()` (so a stopped start leaves no polling timer behind).
 */
async function waitFor(check, timeoutMs, what, cancelled = () => false) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (error) {
      if (cancelled()) throw new Error(`stopped while waiting for ${what}`);
      if (Date.now() > deadline) {
        throw new Error(`${what} not ready within ${timeoutMs} ms: ${error.message}`, {
          cause: error,
        });
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

/**
 * GETs `url` and resolves `{ status, body }` (body parsed as JSON when it is JSON). For https, the
 * certificate is checked against `ca` when given (our self-signed one); a certificate brought by
 * the user is checked against the system store.
 */
export function httpGet(url, ca) {
  const target = new URL(url);
  const client = target.protocol === "https:" ? https : http;
  const options = target.protocol === "https:" ? { ca, servername: "localhost" } : {};
  return new Promise((resolve, reject) => {
    const request = client.get(target, { ...options, timeout: 2_000 }, (response) => {
      let text = "";
      response.setEncoding("utf8");
      response.on("data", (chunk) => {
        text += chunk;
      });
      response.on("end", () => {
        let body = text;
        try {
          body = JSON.parse(text);
        } catch {
          // not JSON: keep the text
        }
        resolve({ status: response.statusCode ?? 0, body, headers: response.headers });
      });
    });
    request.on("timeout", () => request.destroy(new Error(`GET ${url} timed out`)));
    request.on("error", reject);
  });
}

async function expectStatus(url, status, ca) {
  const response = await httpGet(url, ca);
  if (response.status !== status) {
    throw new Error(`GET ${url} answered ${response.status} ${JSON.stringify(response.body)}`);
  }
  return response;
}

/** Resolves when `redis-cli -h host -p port cluster info` says cluster_state:ok, else rejects. */
function clusterOk(redisCli, node) {
  const [host, port] = node.split(":");
  return new Promise((resolve, reject) => {
    const child = spawn(redisCli, ["-h", host, "-p", port, "cluster", "info"], {
      stdio: ["ignore", "pipe", "ignore"],
    });
    let output = "";
    child.stdout.on("data", (chunk) => {
      output += chunk;
    });
    child.once("error", reject);
    child.once("close", () =>
      output.includes("cluster_state:ok") ? resolve() : reject(new Error(`${node} not ok yet`)),
    );
  });
}

/** Sends PING over a raw socket (no client library needed); any RESP reply means Redis is there. */
function redisPing(url) {
  const target = new URL(url);
  if (target.protocol === "rediss:") return Promise.resolve(); // TLS: leave the check to the nodes
  return new Promise((resolve, reject) => {
    const socket = net.connect(
      Number(target.port || 6379),
      target.hostname.replace(/^\[|\]$/g, ""),
    );
    socket.setTimeout(2_000, () => socket.destroy(new Error("no answer to PING")));
    socket.once("connect", () => socket.write("PING\r\n"));
    socket.once("data", (data) => {
      socket.destroy();
      // "+PONG", or "-NOAUTH ..." from a Redis that wants a password: either way it is up.
      if (/^[+-]/.test(data.toString())) resolve();
      else reject(new Error(`unexpected reply to PING: ${data.toString().slice(0, 40)}`));
    });
    socket.once("error", reject);
  });
}
