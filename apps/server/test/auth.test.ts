import { connect as tcpConnect } from "node:net";
import { mintToken, TestClient, UpgradeRefused } from "@mrezhen/testkit";
import { SignJWT } from "jose";
import { describe, expect, it } from "vitest";
import { startNode, upgradeRequest } from "./helpers.js";

const base64url = (value: object) => Buffer.from(JSON.stringify(value)).toString("base64url");
const now = () => Math.floor(Date.now() / 1000);

/** Every token the protocol says must be refused during the upgrade. */
const badTokens: [string, () => Promise<string>][] = [
  ["malformed", async () => "not-a-jwt"],
  [
    "forged (another secret)",
    () => mintToken({ sub: "alice", secret: "someone-elses-secret-value-32-chars!!" }),
  ],
  ["expired", () => mintToken({ sub: "alice", ttlSeconds: -10 })],
  ["not yet valid (nbf)", () => mintToken({ sub: "alice", notBeforeSeconds: 60 })],
  ["wrong issuer", () => mintToken({ sub: "alice", issuer: "someone-else" })],
  [
    "unsigned (alg: none)",
    async () =>
      `${base64url({ alg: "none", typ: "JWT" })}.${base64url({ sub: "alice", iss: "mrezhen", exp: now() + 3600 })}.`,
  ],
  ["signed with another algorithm (HS512)", () => mintToken({ sub: "alice", algorithm: "HS512" })],
  ["without exp", () => mintToken({ sub: "alice", noExpiry: true })],
  ["with an empty sub", () => mintToken({ sub: "" })],
  ["with a sub over 128 characters", () => mintToken({ sub: "x".repeat(129) })],
  [
    "without sub",
    () =>
      new SignJWT({})
        .setProtectedHeader({ alg: "HS256" })
        .setIssuer("mrezhen")
        .setExpirationTime(now() + 3600)
        .sign(new TextEncoder().encode("mrezhen-dev-secret-change-in-production")),
  ],
];

describe("authentication during the upgrade", () => {
  it.each(badTokens)(
    "refuses a token %s with a plain 401 and no WebSocket",
    async (_name, makeToken) => {
      const { wsUrl } = await startNode();
      const token = await makeToken();
      const refusal = await TestClient.connect(`${wsUrl}?token=${encodeURIComponent(token)}`).catch(
        (e: unknown) => e,
      );
      expect(refusal).toBeInstanceOf(UpgradeRefused);
      expect((refusal as UpgradeRefused).status).toBe(401);
    },
  );

  it("refuses a missing token, on /ws and on /", async () => {
    const { wsUrl, url } = await startNode();
    for (const target of [wsUrl, url.replace(/^http/, "ws")]) {
      const refusal = await TestClient.connect(target).catch((e: unknown) => e);
      expect((refusal as UpgradeRefused).status).toBe(401);
    }
  });

  it("answers a bad upgrade with HTTP 401 on the raw socket and closes the TCP connection", async () => {
    const { url } = await startNode();
    const { port } = new URL(url);
    const socket = tcpConnect(Number(port), "127.0.0.1");
    socket.write(upgradeRequest("forged"));
    let response = "";
    socket.on("data", (chunk) => {
      response += chunk.toString();
    });
    await new Promise((resolve) => socket.on("close", resolve));
    expect(response.startsWith("HTTP/1.1 401")).toBe(true);
    expect(response).not.toMatch(/101 Switching Protocols/);
  });

  it("accepts a valid token from the query, from the Authorization header, and on /", async () => {
    const { wsUrl, url } = await startNode();
    const token = await mintToken({ sub: "alice", name: "Alice" });
    const viaQuery = await TestClient.connect(`${wsUrl}?token=${token}`);
    const viaHeader = await TestClient.connect(wsUrl, {
      headers: { authorization: `Bearer ${token}` },
    });
    const viaRoot = await TestClient.connect(`${url.replace(/^http/, "ws")}/?token=${token}`);
    for (const client of [viaQuery, viaHeader, viaRoot]) {
      client.send({ type: "ping" });
      expect((await client.next("pong")).type).toBe("pong");
      await client.close();
    }
  });

  it("prefers the query token over the Authorization header", async () => {
    const { wsUrl } = await startNode();
    const good = await mintToken({ sub: "alice" });
    const refusal = await TestClient.connect(`${wsUrl}?token=forged`, {
      headers: { authorization: `Bearer ${good}` },
    }).catch((e: unknown) => e);
    expect((refusal as UpgradeRefused).status).toBe(401);
  });

  it("tells a connection whose token expires, then closes it with 4001", async () => {
    const { connect } = await startNode();
    const alice = await connect("alice", { ttlSeconds: 1 });
    const error = await alice.next("error", 4000);
    expect(error).toMatchObject({ code: "UNAUTHORIZED" });
    expect((await alice.closed).code).toBe(4001);
  });
});
