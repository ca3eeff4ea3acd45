import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { ConfigError, DEV_JWT_SECRET, loadConfig } from "@mrezhen/server";
import { afterAll, describe, expect, it } from "vitest";

const SECRET = "a-secret-from-a-file-that-is-long-enough-0123456789";
const dir = mkdtempSync(path.join(tmpdir(), "mrezhen-config-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function file(name: string, text: string): string {
  const target = path.join(dir, name);
  writeFileSync(target, text);
  return target;
}

describe("JWT_SECRET_FILE", () => {
  it("reads the secret from the file, without its trailing newline", () => {
    const config = loadConfig({ JWT_SECRET_FILE: file("secret", `${SECRET}\n`) });
    expect(config.jwt.secret).toBe(SECRET);
  });

  it("is accepted by NODE_ENV=production, which still refuses the development default", () => {
    const secretFile = file("prod", SECRET);
    expect(loadConfig({ NODE_ENV: "production", JWT_SECRET_FILE: secretFile }).jwt.secret).toBe(
      SECRET,
    );
    expect(() => loadConfig({ NODE_ENV: "production" })).toThrow(/development default/);
    expect(() =>
      loadConfig({ NODE_ENV: "production", JWT_SECRET_FILE: file("dev", DEV_JWT_SECRET) }),
    ).toThrow(/development default/);
    expect(() =>
      loadConfig({ NODE_ENV: "production", JWT_SECRET_FILE: file("short", "short") }),
    ).toThrow(/needs at least 32/);
  });

  it("loses to an explicitly set JWT_SECRET, which does not even read the file", () => {
    const config = loadConfig({
      JWT_SECRET: "explicit-secret-wins-over-the-file-0123456789",
      JWT_SECRET_FILE: path.join(dir, "does-not-exist"),
    });
    expect(config.jwt.secret).toBe("explicit-secret-wins-over-the-file-0123456789");
  });

  it("refuses a missing or empty file with one line that names it", () => {
    const missing = path.join(dir, "missing");
    expect(() => loadConfig({ JWT_SECRET_FILE: missing })).toThrow(
      new ConfigError(`JWT_SECRET_FILE "${missing}" cannot be read (ENOENT).`),
    );
    const empty = file("empty", " \n");
    expect(() => loadConfig({ JWT_SECRET_FILE: empty })).toThrow(
      new ConfigError(`JWT_SECRET_FILE "${empty}" is empty.`),
    );
  });
});

describe("HOST", () => {
  it("is loopback while the development secret is in use, so nobody else can forge tokens", () => {
    expect(loadConfig({}).host).toBe("127.0.0.1");
    expect(loadConfig({ JWT_SECRET: DEV_JWT_SECRET }).host).toBe("127.0.0.1");
  });

  it("is every interface with a real secret, and whatever HOST says when it is set", () => {
    expect(loadConfig({ JWT_SECRET: SECRET }).host).toBe("0.0.0.0");
    expect(loadConfig({ JWT_SECRET_FILE: file("host", SECRET) }).host).toBe("0.0.0.0");
    expect(loadConfig({ HOST: "0.0.0.0" }).host).toBe("0.0.0.0");
    expect(loadConfig({ HOST: "::1", JWT_SECRET: SECRET }).host).toBe("::1");
  });
});

describe("NODE_ID", () => {
  it.each(["node1", "node-1", "eu-west.node_7", "a", "x".repeat(64)])("accepts %s", (id) => {
    expect(loadConfig({ NODE_ID: id }).nodeId).toBe(id);
  });

  it("is generated in the allowed alphabet when unset", () => {
    expect(loadConfig({}).nodeId).toMatch(/^node-[0-9a-f]{8}$/);
  });

  // `|` splits the Redis engine's event payloads (a sender's copy to its other devices would be
  // corrupted), `:` and spaces would blur keys and client names, and control characters logs.
  it.each(["a|b", "node 1", "node:1", "nöde", "x".repeat(65), "tab\there", "new\nline"])(
    "refuses %j with one line that names the variable",
    (id) => {
      let error: unknown;
      try {
        loadConfig({ NODE_ID: id });
      } catch (caught) {
        error = caught;
      }
      expect(error).toBeInstanceOf(ConfigError);
      const { message } = error as ConfigError;
      expect(message).toMatch(/^NODE_ID must be 1 to 64 characters of A-Z, a-z, 0-9/);
      expect(message.split("\n")).toHaveLength(1);
    },
  );
});
