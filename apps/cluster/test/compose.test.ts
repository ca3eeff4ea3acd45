// docker-compose.yml and the nginx templates it shares with `pnpm cluster` stay in step. No Docker
// engine is needed: `docker-compose config` only parses and interpolates the file.
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { parse as parseYaml } from "yaml";
import { eventually, freePort, TestClient } from "../../../packages/testkit/src/index.js";
import { defaults, otherVariables } from "../../server/src/config.js";
import { NGINX_TEMPLATE_DIR, REPO_ROOT, renderTemplate } from "../src/cluster.mjs";

const composeFile = path.join(REPO_ROOT, "docker-compose.yml");

/** `docker-compose` (v1, Debian's package) or `docker compose` (v2 plugin), whichever answers. */
function findCompose(): string[] | undefined {
  for (const command of [["docker-compose"], ["docker", "compose"]]) {
    const [bin = "", ...args] = command;
    const probe = spawnSync(bin, [...args, "version"], { encoding: "utf8" });
    if (probe.status === 0) return command;
  }
  return undefined;
}

const compose = findCompose();
if (!compose) {
  const why =
    "neither docker-compose nor `docker compose` is installed (apt-get install -y docker-compose)";
  if (process.env["CI"] === "true") throw new Error(`${why}; under CI=true this is a failure.`);
  console.warn(`\n⚠️  SKIPPING docker-compose config checks: ${why}.\n`);
}

/** Every `${MREZHEN_*}` placeholder of the nginx templates. */
function placeholders(): Set<string> {
  const names = new Set<string>();
  for (const file of readdirSync(NGINX_TEMPLATE_DIR).filter((name) => name.endsWith(".template"))) {
    const text = readFileSync(path.join(NGINX_TEMPLATE_DIR, file), "utf8");
    for (const match of text.matchAll(/\$\{(MREZHEN_[A-Z0-9_]+)\}/g)) names.add(match[1] as string);
  }
  return names;
}

describe("nginx templates", () => {
  it("are given a value for every placeholder by docker-compose.yml", () => {
    const yaml = readFileSync(composeFile, "utf8");
    const used = [...placeholders()];
    expect(used.length).toBeGreaterThan(0);
    for (const name of used)
      expect(yaml, `${name} in docker-compose.yml`).toMatch(new RegExp(`^\\s+${name}:`, "m"));
  });

  it("refuse to render with a placeholder left without a value", () => {
    const listen = `listen $\{MREZHEN_LISTEN} ssl;`;
    expect(() => renderTemplate(listen, {})).toThrow(/MREZHEN_LISTEN/);
    // nginx's own (lower-case) variables are left alone.
    expect(renderTemplate(`${listen} $host`, { MREZHEN_LISTEN: "8443" })).toBe(
      "listen 8443 ssl; $host",
    );
    expect(() => renderTemplate("listen $MREZHEN_LISTEN ssl;", {})).toThrow(/\$\{NAME\}/);
  });
});

describe.skipIf(!compose)("docker-compose.yml", () => {
  // An empty env file, so a developer's own .env cannot change the outcome.
  const dir = mkdtempSync(path.join(tmpdir(), "mrezhen-compose-"));
  const emptyEnv = path.join(dir, "empty.env");
  writeFileSync(emptyEnv, "");
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  /** `docker-compose config` with nothing in the environment but PATH and `env`. */
  const run = (env: Record<string, string>, quiet = true) => {
    const [bin = "", ...args] = compose ?? [];
    const flags = quiet ? ["config", "-q"] : ["config"];
    return spawnSync(bin, [...args, "--env-file", emptyEnv, "-f", composeFile, ...flags], {
      cwd: REPO_ROOT,
      encoding: "utf8",
      env: { PATH: process.env["PATH"] ?? "", ...env },
    });
  };
  /** The interpolated file, as compose would run it. */
  const resolved = (env: Record<string, string> = {}): ComposeFile => {
    const result = run(env, false);
    expect(result.stderr).toBe("");
    return parseYaml(result.stdout) as ComposeFile;
  };

  it("is valid with an empty environment: nothing needs to be set first (docker-compose config -q)", () => {
    const result = run({});
    expect(result.stderr).toBe("");
    expect(result.status).toBe(0);
  });

  it("gives the nodes the generated secret file, and an explicitly set JWT_SECRET over it", () => {
    for (const node of ["node1", "node2", "node3"]) {
      const service = resolved().services[node];
      expect(service?.environment).toMatchObject({
        JWT_SECRET_FILE: "/run/mrezhen/jwt_secret",
        JWT_SECRET: "",
      });
      expect(mounts(service)).toContainEqual({
        source: "jwt-secret",
        target: "/run/mrezhen",
        readOnly: true,
      });
      expect(service?.depends_on).toMatchObject({
        secrets: { condition: "service_completed_successfully" },
      });
    }
    const explicit = "x".repeat(40);
    expect(resolved({ JWT_SECRET: explicit }).services["node1"]?.environment).toMatchObject({
      JWT_SECRET: explicit,
    });
  });

  it("passes every node setting through from the environment, unset by default", () => {
    // Set by the image (HOST, WS_PORT, NODE_ENV), fixed by this file because other settings
    // depend on them (drain deadline and heartbeat), or per node (NODE_ID).
    const notPassed = new Set([
      "HOST",
      "WS_PORT",
      "NODE_ENV",
      "SHUTDOWN_TIMEOUT_MS",
      "HEARTBEAT_INTERVAL_MS",
      // Fixed by this file: the Redis service, the generated secret's path, one id per node.
      "REDIS_URL",
      // This file runs one standalone Redis; a Redis Cluster is `pnpm cluster --redis-cluster`.
      "REDIS_CLUSTER_NODES",
      "JWT_SECRET_FILE",
      "NODE_ID",
    ]);
    const names = [...Object.keys(defaults), ...otherVariables].filter(
      (name) => !notPassed.has(name),
    );
    const unset = resolved().services["node1"]?.environment ?? {};
    const set = resolved(Object.fromEntries(names.map((name) => [name, `${name}-value`])));
    for (const name of names) {
      expect(unset[name], `${name} unset`).toBe("");
      expect(set.services["node1"]?.environment?.[name], `${name} set`).toBe(`${name}-value`);
    }
  });

  it("has a token tool that signs with the nodes' secret, outside `docker compose up`", () => {
    const { services } = resolved();
    const token = services["token"];
    const node = services["node1"];
    expect(token?.profiles).toEqual(["tools"]);
    expect(token?.entrypoint).toEqual(["node", "dist/cli/token.js"]);
    expect(token?.image).toBe(node?.image);
    for (const name of ["JWT_SECRET_FILE", "JWT_SECRET", "JWT_ISSUER"]) {
      expect(token?.environment?.[name], name).toBe(node?.environment?.[name]);
    }
    expect(mounts(token)).toEqual(mounts(node));
  });

  it("generates the secret once; a production node accepts it, and tokens signed with it", async () => {
    // The secrets service's own script, run here on a directory in place of the volume.
    const script = resolved().services["secrets"]?.command?.[0] ?? "";
    expect(script).toContain("/secrets/jwt_secret");
    const volume = mkdtempSync(path.join(dir, "volume-"));
    const asHere = script
      .replaceAll("/secrets/", `${volume}/`)
      // Only root may give the file to the image's `node` user; elsewhere it stays ours.
      .replace(/^\s*chown .*$/m, process.getuid?.() === 0 ? "$&" : ":");
    const first = spawnSync("sh", ["-ec", asHere], { encoding: "utf8" });
    expect(first.stdout).toContain("generated a JWT secret");
    const secret = readFileSync(path.join(volume, "jwt_secret"), "utf8");
    expect(secret).toMatch(/^[A-Za-z0-9+/]{64}$/);
    const again = spawnSync("sh", ["-ec", asHere], { encoding: "utf8" });
    expect(again.stdout).toContain("using the existing JWT secret");
    expect(readFileSync(path.join(volume, "jwt_secret"), "utf8")).toBe(secret);

    // The image's settings (NODE_ENV=production refuses the development secret) and the file.
    const env = {
      PATH: process.env["PATH"] ?? "",
      NODE_ENV: "production",
      JWT_SECRET_FILE: path.join(volume, "jwt_secret"),
      LOG_LEVEL: "warn",
    };
    const dist = path.join(REPO_ROOT, "apps/server/dist");
    const minted = spawnSync(process.execPath, [`${dist}/cli/token.js`, "alice"], {
      encoding: "utf8",
      env,
    });
    expect(minted.stderr).toBe("");
    const port = await freePort();
    const node = spawn(process.execPath, [`${dist}/main.js`], {
      env: { ...env, HOST: "127.0.0.1", WS_PORT: String(port) },
      stdio: "inherit",
    });
    try {
      const client = await eventually(
        () => TestClient.connect(`ws://127.0.0.1:${port}/ws?token=${minted.stdout.trim()}`),
        10_000,
        100,
      );
      client.send({ type: "ping" });
      expect((await client.next("pong")).type).toBe("pong");
      await client.close();
    } finally {
      node.kill("SIGKILL");
    }
  });
});

interface ComposeService {
  image?: string;
  profiles?: string[];
  entrypoint?: string[];
  command?: string[];
  environment?: Record<string, string>;
  /** Compose v1 prints `source:target[:ro]`, v2 the long syntax. */
  volumes?: (string | { source: string; target: string; read_only?: boolean })[];
  depends_on?: Record<string, { condition: string }>;
}

interface ComposeFile {
  services: Record<string, ComposeService>;
}

/** A service's mounts, whichever syntax the installed compose printed. */
function mounts(service: ComposeService | undefined) {
  return (service?.volumes ?? []).map((volume) => {
    if (typeof volume !== "string") {
      return { source: volume.source, target: volume.target, readOnly: volume.read_only === true };
    }
    const [source = "", target = "", mode] = volume.split(":");
    return { source, target, readOnly: mode === "ro" };
  });
}

describe("docker/Dockerfile", () => {
  const dockerfile = readFileSync(path.join(REPO_ROOT, "docker/Dockerfile"), "utf8");
  // Continuation lines joined, so that each instruction is one line.
  const instructions = dockerfile.replace(/\\\n/g, " ").split("\n");

  it("builds on a Node.js LTS line that is still supported (22 or 24)", () => {
    const image = /^ARG NODE_IMAGE=node:(\d+)-/m.exec(dockerfile);
    expect(["22", "24"]).toContain(image?.[1]);
  });

  it("keeps pnpm's store in a BuildKit cache mount for every step that reads it", () => {
    const pnpmSteps = instructions.filter((line) =>
      /^RUN .*pnpm (fetch|install|.*deploy)/.test(line),
    );
    expect(pnpmSteps).toHaveLength(3);
    for (const step of pnpmSteps) {
      expect(step).toMatch(/--mount=type=cache,id=mrezhen-pnpm-store,target=\/pnpm\/store/);
      expect(step).toContain('--store-dir "$PNPM_STORE"');
    }
    expect(dockerfile).toMatch(/^ENV PNPM_STORE=\/pnpm\/store$/m);
  });

  it("labels the image with OCI annotations", () => {
    for (const key of ["title", "description", "licenses", "version", "revision"]) {
      expect(dockerfile).toContain(`org.opencontainers.image.${key}=`);
    }
  });
});
