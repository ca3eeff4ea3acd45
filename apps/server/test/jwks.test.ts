import { createHmac, generateKeyPairSync } from "node:crypto";
import { connect as connectTcp } from "node:net";
import { eventually, freePort, mintToken, TestClient } from "@mrezhen/testkit";
import { SignJWT } from "jose";
import { describe, expect, it } from "vitest";
import { startNode, upgradeRequest } from "./helpers.js";
import { issue, JwksServer, signingKey, upgrade } from "./idp.js";

// A Keycloak-like provider: its issuer, and the audience the node is configured for.
const ISSUER = "https://keycloak.test/realms/test";
const AUDIENCE = "mrezhen";
const SECRET = "a-secret-for-hs256-tokens-of-32-characters";

/** Connects with `token` and proves the connection serves (a ping answered). */
async function connectWith(wsUrl: string, token: string): Promise<TestClient> {
  const client = await TestClient.connect(`${wsUrl}?token=${token}`);
  client.send({ type: "ping" });
  await client.next("pong");
  await client.close();
  return client;
}

async function ready(url: string): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`${url}/ready`);
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

describe("tokens from an identity provider's JWKS (JWT_JWKS_URL)", () => {
  it("accepts RS256, ES256 and EdDSA tokens signed by keys the provider publishes", async () => {
    const jwks = await JwksServer.start();
    const keys = await Promise.all([signingKey("RS256"), signingKey("ES256"), signingKey("EdDSA")]);
    jwks.keys = keys.map((key) => key.jwk);
    const { wsUrl } = await startNode({
      JWT_JWKS_URL: jwks.url,
      JWT_ISSUER: ISSUER,
      JWT_AUDIENCE: AUDIENCE,
    });
    for (const key of keys) {
      const token = await issue(key, { sub: `user-${key.alg}`, iss: ISSUER, aud: AUDIENCE });
      await connectWith(wsUrl, token);
    }
    // A key the provider does not publish signs nothing the node accepts.
    const stranger = await signingKey("RS256", keys[0]?.kid);
    const forged = await issue(stranger, { sub: "mallory", iss: ISSUER, aud: AUDIENCE });
    expect(await upgrade(wsUrl, { token: forged })).toEqual({
      status: 401,
      body: "Unauthorized: bad signature.",
    });
  });

  it("follows a key rotation: a new kid is fetched, old tokens work until their key is removed", async () => {
    const jwks = await JwksServer.start();
    const old = await signingKey("RS256", "2026-old");
    jwks.keys = [old.jwk];
    const { wsUrl } = await startNode({
      JWT_JWKS_URL: jwks.url,
      JWT_ISSUER: ISSUER,
      JWT_JWKS_COOLDOWN_MS: "200",
      JWT_JWKS_CACHE_MAX_AGE_MS: "1000",
    });
    const oldToken = await issue(old, { sub: "alice", iss: ISSUER });
    await connectWith(wsUrl, oldToken);

    // The provider publishes a new key and starts signing with it.
    const next = await signingKey("ES256", "2026-new");
    jwks.keys = [old.jwk, next.jwk];
    const newToken = await issue(next, { sub: "bob", iss: ISSUER });
    // Within the cooldown of the first fetch the unknown kid may be refused; then it is fetched.
    await eventually(() => connectWith(wsUrl, newToken), 3000, 100);
    await connectWith(wsUrl, oldToken);

    // The old key is withdrawn: its tokens stop working once the node has refreshed the set.
    jwks.keys = [next.jwk];
    await eventually(
      async () =>
        expect(await upgrade(wsUrl, { token: oldToken })).toEqual({
          status: 401,
          body: "Unauthorized: unknown signing key.",
        }),
      5000,
      100,
    );
    await connectWith(wsUrl, newToken);
  });

  it("makes at most one request per cooldown however many unknown kids arrive", async () => {
    const jwks = await JwksServer.start();
    const key = await signingKey("ES256");
    jwks.keys = [key.jwk];
    const cooldownMs = 1000;
    const { wsUrl, url } = await startNode({
      JWT_JWKS_URL: jwks.url,
      JWT_ISSUER: ISSUER,
      JWT_JWKS_COOLDOWN_MS: String(cooldownMs),
    });
    await eventually(async () => expect((await ready(url)).body).toEqual({ status: "ready" }));
    const strangers = await Promise.all(
      Array.from({ length: 10 }, () =>
        signingKey("ES256").then((k) => issue(k, { sub: "x", iss: ISSUER })),
      ),
    );

    /** 2.5 s of tokens naming kids nobody published, 10 at a time: the requests it caused. */
    const flood = async () => {
      const before = jwks.requests.length;
      const started = Date.now();
      let refused = 0;
      while (Date.now() - started < 2500) {
        const batch = await Promise.all(strangers.map((token) => upgrade(wsUrl, { token })));
        refused += batch.filter((answer) => answer.status === 401).length;
      }
      expect(refused).toBeGreaterThan(50);
      return { requests: jwks.requests.length - before, elapsed: Date.now() - started };
    };

    // Unknown kids do make the node look again (a rotation), but at most once per cooldown.
    const up = await flood();
    expect(up.requests).toBeGreaterThanOrEqual(1);
    expect(up.requests).toBeLessThanOrEqual(Math.floor(up.elapsed / cooldownMs) + 1);
    // A failing provider too: a failed request counts (jose alone would retry on every token).
    jwks.failing = true;
    const failing = await flood();
    expect(failing.requests).toBeGreaterThanOrEqual(1);
    expect(failing.requests).toBeLessThanOrEqual(Math.floor(failing.elapsed / cooldownMs) + 1);
    // The published key works throughout.
    await connectWith(wsUrl, await issue(key, { sub: "alice", iss: ISSUER }));
  });

  it("starts and serves HS256 tokens while the JWKS is down, says so in /ready, and catches up", async () => {
    const port = await freePort();
    const jwks = await JwksServer.notYetListening(port);
    const key = await signingKey("EdDSA");
    jwks.keys = [key.jwk];
    const { wsUrl, url } = await startNode({
      JWT_JWKS_URL: jwks.url,
      JWT_SECRET: SECRET,
      JWT_ISSUER: ISSUER,
      JWT_JWKS_COOLDOWN_MS: "200",
      JWT_JWKS_CACHE_MAX_AGE_MS: "1000",
    });
    // Ready (HS256 tokens are served) but degraded, with the reason.
    const degraded = await ready(url);
    expect(degraded.status).toBe(200);
    expect(degraded.body).toMatchObject({
      status: "degraded",
      reason: expect.stringMatching(/^jwks:/),
    });
    await connectWith(wsUrl, await mintToken({ sub: "alice", secret: SECRET, issuer: ISSUER }));
    const idpToken = await issue(key, { sub: "bob", iss: ISSUER });
    expect(await upgrade(wsUrl, { token: idpToken })).toEqual({
      status: 401,
      body: "Unauthorized: signing keys unavailable.",
    });

    // The provider comes up: the node fetches by itself (no token needed), /ready recovers.
    await jwks.listen();
    await eventually(
      async () => expect(await ready(url)).toEqual({ status: 200, body: { status: "ready" } }),
      5000,
      50,
    );
    await connectWith(wsUrl, idpToken);

    // And goes down again: the keys the node holds keep working, past the cache's age too.
    jwks.failing = true;
    const failedBefore = jwks.requests.length;
    await eventually(
      () => expect(jwks.requests.length).toBeGreaterThan(failedBefore + 1),
      5000,
      50,
    );
    await connectWith(wsUrl, idpToken);
    expect(await ready(url)).toEqual({ status: 200, body: { status: "ready" } });
    await jwks.stop();
    await new Promise((resolve) => setTimeout(resolve, 1200));
    await connectWith(wsUrl, idpToken);
    await connectWith(wsUrl, await mintToken({ sub: "alice", secret: SECRET, issuer: ISSUER }));
  });

  it("is not ready while the JWKS, its only key source, has never been fetched", async () => {
    const jwks = await JwksServer.start();
    jwks.failing = true;
    const { url } = await startNode({ JWT_JWKS_URL: jwks.url, JWT_JWKS_COOLDOWN_MS: "200" });
    await eventually(() => expect(jwks.requests.length).toBeGreaterThan(0));
    const answer = await ready(url);
    expect(answer.status).toBe(503);
    expect(answer.body).toMatchObject({
      status: "unavailable",
      reason: expect.stringMatching(/^jwks: .*HTTP 503/),
    });
    jwks.failing = false;
    await eventually(async () => expect((await ready(url)).status).toBe(200), 5000, 50);
  });

  it("gives back the connection slot of a client that left while its token was being checked", async () => {
    const jwks = await JwksServer.start();
    const key = await signingKey("RS256");
    jwks.keys = [key.jwk];
    jwks.delayMs = 300;
    const { url, wsUrl } = await startNode({
      JWT_JWKS_URL: jwks.url,
      JWT_ISSUER: ISSUER,
      MAX_CONNECTIONS_PER_USER: "1",
    });
    const token = await issue(key, { sub: "alice", iss: ISSUER });
    const socket = connectTcp(Number(new URL(url).port), "127.0.0.1");
    await new Promise((resolve) => socket.once("connect", resolve));
    socket.write(upgradeRequest(token));
    // The node is fetching the keys: the client leaves before they come.
    await eventually(() => expect(jwks.requests.length).toBe(1));
    socket.destroy();
    await new Promise((resolve) => setTimeout(resolve, jwks.delayMs + 200));
    // Alice's one slot is free: her next connection gets in (it would get 429 if the slot
    // taken for the socket that had gone were never given back). The upgrade's socket is paused
    // while its token is checked, so it closes only once the node writes to it.
    jwks.delayMs = 0;
    await connectWith(wsUrl, token);
  });
});

describe("the RFC 8725 cases, through a real upgrade", () => {
  const base64url = (value: unknown) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const now = () => Math.floor(Date.now() / 1000);
  const rsa = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const pem = rsa.publicKey.export({ type: "spki", format: "pem" }).toString();
  const claims = () => ({ sub: "alice", iss: ISSUER, aud: AUDIENCE, exp: now() + 3600 });

  /** A node that trusts the PEM key and a JWKS, and checks the audience. */
  async function node() {
    const jwks = await JwksServer.start();
    const key = await signingKey("ES256");
    jwks.keys = [key.jwk];
    const started = await startNode({
      JWT_PUBLIC_KEY: pem,
      JWT_JWKS_URL: jwks.url,
      JWT_ISSUER: ISSUER,
      JWT_AUDIENCE: AUDIENCE,
    });
    return { ...started, jwks, key };
  }

  const rs256 = (
    payload: Record<string, unknown>,
    header: Record<string, unknown> = {},
    crit?: Record<string, boolean>,
  ) =>
    new SignJWT(payload)
      .setProtectedHeader({ alg: "RS256", ...header })
      .sign(rsa.privateKey, crit === undefined ? {} : { crit });

  it("accepts the PEM key's and the JWKS's tokens, for the right audience", async () => {
    const { wsUrl, key } = await node();
    await connectWith(wsUrl, await rs256(claims()));
    await connectWith(wsUrl, await issue(key, { sub: "bob", iss: ISSUER, aud: AUDIENCE }));
  });

  it.each<[string, (key: Awaited<ReturnType<typeof node>>["key"]) => Promise<string>, string]>([
    [
      "alg none",
      async () => `${base64url({ alg: "none", typ: "JWT" })}.${base64url(claims())}.`,
      "bad signature",
    ],
    [
      "HS256 signed with the PEM public key's text as the secret (algorithm confusion)",
      async () => {
        const input = `${base64url({ alg: "HS256", typ: "JWT" })}.${base64url(claims())}`;
        return `${input}.${createHmac("sha256", pem).update(input).digest("base64url")}`;
      },
      "algorithm not allowed",
    ],
    [
      "an unknown critical header",
      () => rs256(claims(), { crit: ["x-check"], "x-check": true }, { "x-check": true }),
      "unsupported critical header",
    ],
    ["another audience", () => rs256({ ...claims(), aud: "account" }), "invalid claim aud"],
    ["no audience", () => rs256({ ...claims(), aud: undefined }), "missing claim aud"],
    [
      "an iat a minute in the future",
      () => rs256({ ...claims(), iat: now() + 60 }),
      "token issued in the future",
    ],
    [
      "a non-canonical signature (its last character changed, same bytes)",
      async () => {
        const token = await rs256(claims());
        // 256 bytes are 342 characters: the last carries 4 unused bits.
        const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        const last = alphabet.indexOf(token.at(-1) as string);
        return `${token.slice(0, -1)}${alphabet.charAt(last ^ 1)}`;
      },
      "bad signature",
    ],
    [
      "a JWKS-style token from a key outside the JWKS",
      async (key) =>
        issue(await signingKey("ES256", key.kid), { sub: "mallory", iss: ISSUER, aud: AUDIENCE }),
      "bad signature",
    ],
  ])("refuses %s with 401", async (_name, makeToken, reason) => {
    const { wsUrl, key } = await node();
    expect(await upgrade(wsUrl, { token: await makeToken(key) })).toEqual({
      status: 401,
      body: `Unauthorized: ${reason}.`,
    });
  });

  it("never fetches a key a token's header names (jku, x5u) nor uses one it embeds (jwk)", async () => {
    const { wsUrl, jwks } = await node();
    // The attacker's own provider, serving the attacker's key.
    const attacker = await JwksServer.start();
    const evil = await signingKey("ES256", "evil");
    attacker.keys = [evil.jwk];
    const headers = [
      { jku: `${attacker.url}?via=jku` },
      { x5u: `${attacker.url}?via=x5u` },
      { jwk: evil.jwk },
      { jku: attacker.url, jwk: evil.jwk, x5u: attacker.url },
    ];
    const before = jwks.requests.length;
    for (const header of headers) {
      for (const noKid of [false, true]) {
        const token = await issue(evil, {
          sub: "mallory",
          iss: ISSUER,
          aud: AUDIENCE,
          header,
          noKid,
        });
        const answer = await upgrade(wsUrl, { token });
        expect(answer.status).toBe(401);
      }
    }
    expect(attacker.requests).toEqual([]);
    // The configured JWKS may be asked again (an unknown kid), never with the header's URL.
    expect(jwks.requests.slice(before).every((path) => !path.includes("via="))).toBe(true);
  });
});
