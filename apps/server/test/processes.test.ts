import { execFile, spawn } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { loadConfig, TokenVerifier } from "@mrezhen/server";
import { freePort, TestClient } from "@mrezhen/testkit";
import { decodeProtectedHeader } from "jose";
import { describe, expect, it, onTestFinished } from "vitest";

const run = promisify(execFile);
const dist = fileURLToPath(new URL("../dist/", import.meta.url));
const SECRET = "a-test-secret-that-is-long-enough-1234567890";

function env(extra: Record<string, string>): NodeJS.ProcessEnv {
  const { REDIS_URL: _ignored, ...rest } = process.env;
  return { ...rest, LOG_LEVEL: "warn", ...extra };
}

describe("pnpm token", () => {
  it("prints only a token that the server's verifier accepts, with the display name", async () => {
    const { stdout, stderr } = await run(
      process.execPath,
      [`${dist}cli/token.js`, "user_alice", "Alice", "--ttl", "2h"],
      {
        env: env({ JWT_SECRET: SECRET }),
      },
    );
    expect(stderr).toBe("");
    expect(stdout).toMatch(/^[\w-]+\.[\w-]+\.[\w-]+\n$/);
    const principal = await (
      await TokenVerifier.create(loadConfig({ JWT_SECRET: SECRET }).jwt)
    ).verify(stdout.trim());
    expect(principal.userId).toBe("user_alice");
    expect(principal.name).toBe("Alice");
    expect(principal.expiresAt - Date.now()).toBeGreaterThan(7_000_000);
    expect(principal.expiresAt - Date.now()).toBeLessThanOrEqual(7_200_000);
  });

  it("explains its usage on stderr and exits 2 without a user id", async () => {
    const failure = await run(process.execPath, [`${dist}cli/token.js`], { env: env({}) }).catch(
      (e: unknown) => e,
    );
    expect(failure).toMatchObject({ code: 2, stdout: "" });
    expect((failure as { stderr: string }).stderr).toMatch(/usage: pnpm run token/);
  });

  it.each([
    ["an RSA", "rsa", "RS256"],
    ["an EC P-256", "ec", "ES256"],
    ["an Ed25519", "ed25519", "EdDSA"],
  ] as const)(
    "signs with %s private key (--key), the algorithm from its type, and --kid",
    async (_name, type, alg) => {
      const { privateKey, publicKey } =
        type === "rsa"
          ? generateKeyPairSync("rsa", { modulusLength: 2048 })
          : type === "ec"
            ? generateKeyPairSync("ec", { namedCurve: "P-256" })
            : generateKeyPairSync("ed25519");
      const dir = mkdtempSync(join(tmpdir(), "mrezhen-token-"));
      onTestFinished(() => rmSync(dir, { recursive: true, force: true }));
      const keyFile = join(dir, "private.pem");
      writeFileSync(keyFile, privateKey.export({ type: "pkcs8", format: "pem" }));
      const pem = publicKey.export({ type: "spki", format: "pem" }).toString();
      const serverEnv = { JWT_PUBLIC_KEY: pem, JWT_AUDIENCE: "mrezhen-chat" };
      const { stdout } = await run(
        process.execPath,
        [`${dist}cli/token.js`, "alice", "--key", keyFile, "--kid", "key-1"],
        { env: env(serverEnv) },
      );
      const token = stdout.trim();
      expect(decodeProtectedHeader(token)).toEqual({ alg, typ: "JWT", kid: "key-1" });
      const verifier = await TokenVerifier.create(loadConfig(serverEnv).jwt);
      expect(await verifier.verify(token)).toMatchObject({ userId: "alice" });
    },
  );
});

describe("the README's commands, as written", () => {
  const root = fileURLToPath(new URL("../../../", import.meta.url));

  it("`pnpm run token alice Alice` prints a token and nothing else on stdout", async () => {
    const { stdout } = await run("pnpm", ["run", "token", "alice", "Alice"], {
      cwd: root,
      env: env({ JWT_SECRET: SECRET }),
    });
    const principal = await (
      await TokenVerifier.create(loadConfig({ JWT_SECRET: SECRET }).jwt)
    ).verify(stdout.trim());
    expect(principal).toMatchObject({ userId: "alice", name: "Alice" });
    expect(stdout.trim().split("\n")).toHaveLength(1);
  });

  it("`pnpm run token --help` prints the usage and exits 0", async () => {
    const { stdout } = await run("pnpm", ["--silent", "run", "token", "--help"], {
      cwd: root,
      env: env({}),
    });
    expect(stdout).toMatch(/^usage: pnpm run token <userId>/);
  });

  it("`pnpm start` builds and serves the embedded node", async () => {
    const port = await freePort();
    const child = spawn("pnpm", ["start"], {
      cwd: root,
      env: env({ WS_PORT: String(port), HOST: "127.0.0.1" }),
      stdio: "ignore",
      detached: true, // its own process group, so the node under pnpm is stopped with it
    });
    onTestFinished(() => {
      if (child.pid !== undefined) process.kill(-child.pid, "SIGKILL");
    });
    let health: Response | undefined;
    for (let i = 0; i < 300 && health === undefined; i++) {
      health = await fetch(`http://127.0.0.1:${port}/health`).catch(() => undefined);
      if (health === undefined) await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect(health?.status).toBe(200);
    expect(await health?.json()).toMatchObject({ status: "ok", connections: 0 });
  }, 60_000);
});

describe("start-up", () => {
  it.each([
    [{ WS_PORT: "http" }, /WS_PORT must be a whole number from 0 to 65535; got "http"/],
    [{ RATE_LIMIT_MESSAGES: "0" }, /RATE_LIMIT_MESSAGES must be a whole number from 1/],
    [{ NODE_ENV: "production" }, /JWT_SECRET is the development default/],
    [{ NODE_ENV: "production", JWT_SECRET: "short" }, /needs at least 32/],
    [{ LOG_LEVEL: "loud" }, /LOG_LEVEL must be one of/],
    [{ REDIS_URL: "localhost:6379" }, /REDIS_URL must start with redis:\/\//],
    [{ NODE_ID: "node|1" }, /NODE_ID must be 1 to 64 characters/],
  ])("refuses %o with one line and exit code 1", async (bad, message) => {
    const failure = (await run(process.execPath, [`${dist}main.js`], {
      env: env({ WS_PORT: "0", ...bad }),
    }).catch((e: unknown) => e)) as { code: number; stderr: string };
    expect(failure.code).toBe(1);
    expect(failure.stderr).toMatch(message);
    expect(failure.stderr.trim().split("\n")).toHaveLength(1);
  });

  it("starts on the embedded engine, serves, and exits 0 on SIGTERM with clients closed by 1012", async () => {
    const port = await freePort();
    const child = spawn(process.execPath, [`${dist}main.js`], {
      env: env({ WS_PORT: String(port), HOST: "127.0.0.1", JWT_SECRET: SECRET }),
      stdio: ["ignore", "pipe", "pipe"],
    });
    onTestFinished(() => void child.kill("SIGKILL"));
    const exited = new Promise<number | null>((resolve) => child.on("exit", resolve));
    const base = `http://127.0.0.1:${port}`;
    for (let i = 0; i < 100; i++) {
      if (
        await fetch(`${base}/health`).then(
          (r) => r.ok,
          () => false,
        )
      )
        break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const { stdout: token } = await run(process.execPath, [`${dist}cli/token.js`, "alice"], {
      env: env({ JWT_SECRET: SECRET }),
    });
    const alice = await TestClient.connect(`ws://127.0.0.1:${port}/ws?token=${token.trim()}`);
    alice.send({ type: "ping" });
    await alice.next("pong");
    child.kill("SIGTERM");
    expect((await alice.closed).code).toBe(1012);
    expect(await exited).toBe(0);
  });
});
