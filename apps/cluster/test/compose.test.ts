// docker-compose.yml and the nginx templates it shares with `pnpm cluster` stay in step. No Docker
// engine is needed: `docker-compose config` only parses and interpolates the file.
import { spawnSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, describe, expect, it } from "vitest";
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

  const run = (env: Record<string, string>) => {
    const [bin = "", ...args] = compose ?? [];
    const { JWT_SECRET: _ignored, ...inherited } = process.env;
    return spawnSync(bin, [...args, "--env-file", emptyEnv, "-f", composeFile, "config", "-q"], {
      cwd: REPO_ROOT,
      encoding: "utf8",
      env: { ...inherited, ...env },
    });
  };

  it("is valid (docker-compose config -q)", () => {
    const result = run({ JWT_SECRET: "x".repeat(64) });
    expect(result.stderr).toBe("");
    expect(result.status).toBe(0);
  });

  it("refuses to start without JWT_SECRET, and says so", () => {
    const result = run({});
    expect(result.status).not.toBe(0);
    expect(result.stderr).toMatch(/set JWT_SECRET/);
  });
});
