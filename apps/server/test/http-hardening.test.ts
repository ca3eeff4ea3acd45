import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { type Socket, connect as tcpConnect } from "node:net";
import { Writable } from "node:stream";
import { ConfigError, createNode, loadConfig } from "@mrezhen/server";
import { mintToken } from "@mrezhen/testkit";
import { pino } from "pino";
import { describe, expect, it, onTestFinished } from "vitest";
import { startNode } from "./helpers.js";

/** A raw TCP connection to the node that records what it gets and when it closes. */
function rawConnection(httpUrl: string) {
  const { port } = new URL(httpUrl);
  const socket: Socket = tcpConnect(Number(port), "127.0.0.1");
  onTestFinished(() => void socket.destroy());
  const started = performance.now();
  let answer = "";
  // Reading matters: a socket that is not read never sees the node's FIN, and looks open.
  socket.on("data", (chunk) => {
    answer += chunk.toString();
  });
  socket.on("error", () => {});
  const closedAfterMs = new Promise<number>((resolve) =>
    socket.on("close", () => resolve(performance.now() - started)),
  );
  return { socket, closedAfterMs, answer: () => answer };
}

describe("connections that never complete a request (UPGRADE_TIMEOUT_MS)", () => {
  const TIMEOUT_MS = 600;

  it("closes a silent socket and a half-sent request within the timeout, and keeps an idle WebSocket open", async () => {
    const node = await startNode({ UPGRADE_TIMEOUT_MS: String(TIMEOUT_MS) });
    const idle = await node.connect("alice");
    const silent = rawConnection(node.url);
    const halfLine = rawConnection(node.url);
    halfLine.socket.write("GET /ws?token=abc HTT");
    const halfHeaders = rawConnection(node.url);
    halfHeaders.socket.write("GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n");

    for (const connection of [silent, halfLine, halfHeaders]) {
      const after = await connection.closedAfterMs;
      // Node checks a tenth of the timeout apart; the rest is slack for a loaded machine.
      expect(after).toBeGreaterThanOrEqual(TIMEOUT_MS - 50);
      expect(after).toBeLessThan(TIMEOUT_MS * 1.1 + 400);
      expect(connection.answer()).toMatch(/^HTTP\/1\.1 408 Request Timeout\r\n/);
    }

    // Three timeouts later the idle WebSocket is still open and serving.
    await new Promise((resolve) => setTimeout(resolve, 3 * TIMEOUT_MS));
    expect(idle.socket.readyState).toBe(idle.socket.OPEN);
    idle.send({ type: "ping" });
    await idle.next("pong");
  });

  it("lets an upgrade or a request sent slowly, but whole within the timeout, through", async () => {
    const node = await startNode({ UPGRADE_TIMEOUT_MS: String(TIMEOUT_MS) });
    const token = await mintToken({ sub: "alice" });
    const upgrade = rawConnection(node.url);
    upgrade.socket.write(`GET /ws?token=${token} HTT`);
    await new Promise((resolve) => setTimeout(resolve, TIMEOUT_MS / 3));
    upgrade.socket.write(
      "P/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    await expect.poll(() => upgrade.answer()).toMatch(/^HTTP\/1\.1 101 Switching Protocols\r\n/);
    // Upgraded, it is past every HTTP deadline.
    await new Promise((resolve) => setTimeout(resolve, 2 * TIMEOUT_MS));
    expect(upgrade.socket.destroyed).toBe(false);

    const probe = rawConnection(node.url);
    probe.socket.write("GET /health HTT");
    await new Promise((resolve) => setTimeout(resolve, TIMEOUT_MS / 3));
    probe.socket.write("P/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    await probe.closedAfterMs;
    expect(probe.answer()).toMatch(/^HTTP\/1\.1 200 OK\r\n/);
  });

  it("is a configuration variable, validated at start-up", () => {
    expect(loadConfig({}).upgradeTimeoutMs).toBe(10_000);
    expect(loadConfig({ UPGRADE_TIMEOUT_MS: "2500" }).upgradeTimeoutMs).toBe(2500);
    for (const bad of ["0", "99", "1.5", "ten", "600001"]) {
      expect(() => loadConfig({ UPGRADE_TIMEOUT_MS: bad })).toThrow(ConfigError);
      expect(() => loadConfig({ UPGRADE_TIMEOUT_MS: bad })).toThrow(
        `UPGRADE_TIMEOUT_MS must be a whole number from 100 to 600000; got "${bad}".`,
      );
    }
  });
});

describe("the listen backlog (LISTEN_BACKLOG)", () => {
  it("is what the node's listening socket gets from the kernel (Send-Q of `ss -lt`)", async () => {
    const hasSs = spawnSync("ss", ["-V"]).status === 0;
    if (!hasSs) {
      // CI installs iproute2; elsewhere say so rather than pass quietly.
      if (process.env["CI"] === "true") throw new Error("ss (iproute2) is needed for this test");
      console.warn("SKIPPED: ss (iproute2) is not installed");
      return;
    }
    const backlogOf = (url: string) => {
      const port = new URL(url).port;
      const out = spawnSync("ss", ["-ltnH", `sport = :${port}`], { encoding: "utf8" }).stdout;
      // State Recv-Q Send-Q Local Peer: for a listening socket Send-Q is the backlog.
      return Number(out.trim().split(/\s+/)[2]);
    };
    const defaults = await startNode();
    // The kernel caps it at net.core.somaxconn (4096 here and on current kernels).
    expect(backlogOf(defaults.url)).toBe(Math.min(4096, somaxconn()));
    const small = await startNode({ LISTEN_BACKLOG: "37" });
    expect(backlogOf(small.url)).toBe(37);
    expect(() => loadConfig({ LISTEN_BACKLOG: "0" })).toThrow(ConfigError);
  });
});

function somaxconn(): number {
  return Number(readFileSync("/proc/sys/net/core/somaxconn", "utf8"));
}

describe("the demo page's security headers", () => {
  it("sends a CSP that allows only the page's own inline script and style and scripts from its origin (the SDK), no framing, and nosniff, on / and /demo", async () => {
    const { url } = await startNode();
    for (const path of ["/", "/demo"]) {
      const response = await fetch(`${url}${path}`);
      expect(response.status).toBe(200);
      const html = await response.text();
      const csp = response.headers.get("content-security-policy") ?? "";
      const directives = new Map(
        csp.split(";").map((part) => {
          const [name = "", ...values] = part.trim().split(/\s+/);
          return [name, values] as const;
        }),
      );
      const hashOf = (tag: string) => {
        const text = new RegExp(`<${tag}(?:\\s[^>]*)?>([\\s\\S]*?)</${tag}>`).exec(html)?.[1] ?? "";
        return `'sha256-${createHash("sha256").update(text).digest("base64")}'`;
      };
      expect(directives.get("default-src")).toEqual(["'none'"]);
      expect(directives.get("script-src")).toEqual(["'self'", hashOf("script")]);
      expect(directives.get("style-src")).toEqual([hashOf("style")]);
      expect(directives.get("connect-src")).toEqual(["'self'", "ws:", "wss:"]);
      expect(directives.get("frame-ancestors")).toEqual(["'none'"]);
      expect(csp).not.toContain("unsafe-inline");
      expect(response.headers.get("x-frame-options")).toBe("DENY");
      expect(response.headers.get("x-content-type-options")).toBe("nosniff");
    }
    // The SDK the page imports, as JavaScript (nosniff would refuse any other type).
    const sdk = await fetch(`${url}/sdk/client.js`);
    expect(sdk.status).toBe(200);
    expect(sdk.headers.get("content-type")).toBe("text/javascript; charset=utf-8");
    expect(await sdk.text()).toContain("MrezhenClient");
  });
});

describe("not found", () => {
  it("answers an unknown route with a fixed body that does not echo the URL (it may hold a token)", async () => {
    const { url } = await startNode();
    const secret = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.dG9rZW4";
    for (const [method, path] of [
      ["GET", `/nope?token=${secret}`],
      ["GET", `/ws/${secret}`],
      ["POST", `/health?token=${secret}`],
    ] as const) {
      const response = await fetch(`${url}${path}`, { method });
      expect(response.status).toBe(404);
      const body = await response.text();
      expect(JSON.parse(body)).toEqual({ error: "Not Found", message: "No such route." });
      expect(body).not.toContain(secret);
    }
  });
});

describe("the development JWT secret", () => {
  /** Creates (and closes) a node whose log lines are captured. */
  async function startupLog(env: Record<string, string>): Promise<Record<string, unknown>[]> {
    const lines: Record<string, unknown>[] = [];
    const stream = new Writable({
      write(chunk, _encoding, done) {
        for (const line of chunk.toString().split("\n").filter(Boolean)) {
          lines.push(JSON.parse(line) as Record<string, unknown>);
        }
        done();
      },
    });
    const config = loadConfig({ WS_PORT: "0", HOST: "127.0.0.1", ...env });
    const node = await createNode({ config, logger: pino({ level: "info" }, stream) });
    await node.close();
    return lines;
  }

  it("is announced at start-up with a loud warning that says how to set JWT_SECRET", async () => {
    const lines = await startupLog({});
    const warnings = lines.filter((line) => line["level"] === 40);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]?.["msg"]).toMatch(/anyone who has read it can forge a token for any user/);
    expect(warnings[0]?.["msg"]).toMatch(/Set JWT_SECRET to a random secret/);
  });

  it("is not mentioned when JWT_SECRET is set", async () => {
    const lines = await startupLog({ JWT_SECRET: "a-real-secret-of-at-least-32-characters!" });
    expect(lines.filter((line) => line["level"] === 40)).toEqual([]);
  });
});
