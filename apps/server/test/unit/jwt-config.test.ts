import { generateKeyPairSync } from "node:crypto";
import { describe, expect, it } from "vitest";
import { ConfigError, DEV_JWT_SECRET, loadConfig } from "../../src/config.js";

const pem = (type: "rsa" | "ec" | "ed25519" | "x25519") => {
  const { publicKey, privateKey } =
    type === "rsa"
      ? generateKeyPairSync("rsa", { modulusLength: 2048 })
      : type === "ec"
        ? generateKeyPairSync("ec", { namedCurve: "P-384" })
        : type === "ed25519"
          ? generateKeyPairSync("ed25519")
          : generateKeyPairSync("x25519");
  return {
    public: publicKey.export({ type: "spki", format: "pem" }).toString(),
    private: privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
  };
};
const JWKS = "https://keycloak.example.com/realms/myrealm/protocol/openid-connect/certs";

describe("the token configuration", () => {
  it("uses the development secret only when no key source is set", () => {
    expect(loadConfig({}).jwt).toMatchObject({ secret: DEV_JWT_SECRET, algorithms: ["HS256"] });
    expect(loadConfig({ JWT_PUBLIC_KEY: pem("rsa").public }).jwt).toMatchObject({
      secret: undefined,
      algorithms: ["RS256"],
    });
    expect(loadConfig({ JWT_JWKS_URL: JWKS }).jwt.secret).toBeUndefined();
    // And so production needs no secret when tokens come from an identity provider.
    expect(loadConfig({ NODE_ENV: "production", JWT_JWKS_URL: JWKS }).jwt.algorithms).not.toContain(
      "HS256",
    );
  });

  it("derives the algorithms from the keys: HS256, the PEM key's type, every asymmetric one for a JWKS", () => {
    expect(loadConfig({ JWT_PUBLIC_KEY: pem("ec").public }).jwt.algorithms).toEqual(["ES384"]);
    expect(loadConfig({ JWT_PUBLIC_KEY: pem("ed25519").public }).jwt.algorithms).toEqual(["EdDSA"]);
    const both = loadConfig({ JWT_SECRET: "s".repeat(32), JWT_PUBLIC_KEY: pem("rsa").public });
    expect(both.jwt.algorithms).toEqual(["HS256", "RS256"]);
    const jwks = loadConfig({ JWT_JWKS_URL: JWKS }).jwt.algorithms;
    expect(jwks).toEqual(expect.arrayContaining(["RS256", "ES256", "EdDSA", "PS256"]));
    expect(jwks).not.toContain("HS256");
    expect(jwks).not.toContain("none");
  });

  it("pins JWT_ALGORITHMS, and refuses ones no configured key verifies", () => {
    expect(
      loadConfig({ JWT_JWKS_URL: JWKS, JWT_ALGORITHMS: "RS256, ES256" }).jwt.algorithms,
    ).toEqual(["RS256", "ES256"]);
    for (const [env, message] of [
      [{ JWT_JWKS_URL: JWKS, JWT_ALGORITHMS: "none" }, /"none" is not supported/],
      [{ JWT_JWKS_URL: JWKS, JWT_ALGORITHMS: "HS512" }, /"HS512" is not supported/],
      [{ JWT_JWKS_URL: JWKS, JWT_ALGORITHMS: "HS256" }, /no configured key verifies HS256/],
      [{ JWT_PUBLIC_KEY: pem("rsa").public, JWT_ALGORITHMS: "ES256" }, /verifies ES256/],
    ] as const) {
      expect(() => loadConfig(env)).toThrow(ConfigError);
      expect(() => loadConfig(env)).toThrow(message);
    }
  });

  it.each([
    [{ JWT_PUBLIC_KEY: "not a pem" }, /^JWT_PUBLIC_KEY is not a PEM public key/],
    [{ JWT_PUBLIC_KEY: pem("rsa").private }, /^JWT_PUBLIC_KEY holds a private key/],
    [{ JWT_PUBLIC_KEY: pem("x25519").public }, /^JWT_PUBLIC_KEY is a x25519 key/],
    [{ JWT_JWKS_URL: "ftp://example.com/certs" }, /^JWT_JWKS_URL must be an http/],
    [{ JWT_JWKS_URL: "/certs" }, /^JWT_JWKS_URL must be an http/],
    [{ JWT_MAX_AGE: "soon" }, /^JWT_MAX_AGE must be a duration/],
    [{ JWT_MAX_AGE: "0" }, /^JWT_MAX_AGE must be a duration/],
    [{ JWT_JWKS_COOLDOWN_MS: "-1" }, /^JWT_JWKS_COOLDOWN_MS must be a whole number/],
    [{ TOKEN_EXPIRING_NOTICE_MS: "soon" }, /^TOKEN_EXPIRING_NOTICE_MS must be a whole number/],
  ])("refuses %o with one line naming the variable", (env, message) => {
    expect(() => loadConfig(env)).toThrow(message);
  });

  it("reads JWT_MAX_AGE as seconds or with a unit", () => {
    expect(loadConfig({ JWT_MAX_AGE: "3600" }).jwt.maxAgeSeconds).toBe(3600);
    expect(loadConfig({ JWT_MAX_AGE: "30m" }).jwt.maxAgeSeconds).toBe(1800);
    expect(loadConfig({ JWT_MAX_AGE: "1d" }).jwt.maxAgeSeconds).toBe(86_400);
    expect(loadConfig({}).jwt.maxAgeSeconds).toBeUndefined();
  });
});
