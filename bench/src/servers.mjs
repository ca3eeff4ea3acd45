// Server processes: started pinned to the server core, watched until healthy, stopped for sure.
import { spawn } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import net from "node:net";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";

const HOOK = fileURLToPath(new URL("./server-hook.mjs", import.meta.url));
const HEALTHY_WITHIN_MS = 30_000;
/**
 * Extra Node flags for every server, for profiling a run: `BENCH_SERVER_FLAGS="--cpu-prof"` or
 * `"--trace-gc"` (Node refuses those in NODE_OPTIONS). Output lands in the kept log directory or
 * the working directory.
 */
const NODE_FLAGS = (process.env.BENCH_SERVER_FLAGS ?? "").split(" ").filter(Boolean);
/**
 * How long a server may take to exit after SIGTERM before it is killed. A CPU profile is written
 * at exit, which for a long run with many connections takes longer than a plain shutdown.
 */
const STOP_WITHIN_MS = NODE_FLAGS.some((flag) => flag.startsWith("--cpu-prof")) ? 60_000 : 5_000;

/** A free loopback TCP port (asked of the kernel, then released for the server to take). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/** `taskset -c <cpus> node …` when pinning, else node itself; taskset execs, so the pid is node's. */
export function pinned(cpus, args) {
  return cpus === undefined
    ? [process.execPath, args]
    : ["taskset", ["-c", cpus, process.execPath, ...args]];
}

/**
 * Starts one server process with --expose-gc and the bench hook preloaded; its output goes to
 * `<logDir>/<name>.log`. Resolves once GET /health answers 200.
 */
export async function startServer({ name, script, env, cpus, logDir }) {
  const port = await freePort();
  const logPath = join(logDir, `${name}.log`);
  const log = openSync(logPath, "a");
  const [command, args] = pinned(cpus, [...NODE_FLAGS, "--expose-gc", "--import", HOOK, script]);
  const child = spawn(command, args, {
    env: { ...env, WS_PORT: String(port) },
    stdio: ["ignore", log, log],
  });
  closeSync(log);
  const server = { name, port, pid: child.pid, child, logPath, exited: false };
  child.once("exit", () => {
    server.exited = true;
  });
  const deadline = performance.now() + HEALTHY_WITHIN_MS;
  while (!(await healthy(port))) {
    if (server.exited || performance.now() > deadline) {
      await stopServer(server);
      const tail = readFileSync(logPath, "utf8").split("\n").slice(-15).join("\n");
      throw new Error(`${name} did not become healthy on port ${port}:\n${tail}`);
    }
    await sleep(100);
  }
  return server;
}

async function healthy(port) {
  try {
    const res = await fetch(`http://127.0.0.1:${port}/health`, {
      signal: AbortSignal.timeout(1000),
    });
    return res.status === 200;
  } catch {
    return false;
  }
}

/** SIGTERM, then SIGKILL if the process is still there after a grace period. */
export async function stopServer(server) {
  if (server.exited) return;
  const exited = new Promise((resolve) => server.child.once("exit", resolve));
  server.child.kill("SIGTERM");
  const graceful = await Promise.race([exited.then(() => true), sleep(STOP_WITHIN_MS, false)]);
  if (!graceful) {
    server.child.kill("SIGKILL");
    await exited;
  }
}
