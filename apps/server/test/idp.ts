import { randomBytes } from "node:crypto";
import { createServer, request, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { type CryptoKey, exportJWK, generateKeyPair, type JWK, SignJWT } from "jose";
import { onTestFinished } from "vitest";

/** What a local identity provider signs with: a key pair, its `kid` and `alg`. */
export interface SigningKey {
  readonly kid: string;
  readonly alg: "RS256" | "ES256" | "EdDSA";
  readonly privateKey: CryptoKey;
  /** The public half as a JWK, with kid, alg and use, as a provider publishes it. */
  readonly jwk: JWK;
}

export async function signingKey(alg: SigningKey["alg"], kid?: string): Promise<SigningKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const id = kid ?? `${alg.toLowerCase()}-${randomBytes(4).toString("hex")}`;
  return {
    kid: id,
    alg,
    privateKey,
    jwk: { ...(await exportJWK(publicKey)), kid: id, alg, use: "sig" },
  };
}

export interface TokenClaims {
  readonly sub: string;
  readonly iss: string;
  readonly aud?: string;
  /** Lifetime in seconds from now (default an hour). */
  readonly ttlSeconds?: number;
  readonly extra?: Record<string, unknown>;
  /** Header fields beside alg and kid (jku, x5u, jwk, crit, ...). */
  readonly header?: Record<string, unknown>;
  /** Leave the kid out of the header. */
  readonly noKid?: boolean;
}

/** A token as an identity provider issues it: signed with `key`, its kid in the header. */
export function issue(key: SigningKey, claims: TokenClaims): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  let jwt = new SignJWT({ ...claims.extra })
    .setProtectedHeader({
      alg: key.alg,
      typ: "JWT",
      ...(claims.noKid ? {} : { kid: key.kid }),
      ...claims.header,
    })
    .setSubject(claims.sub)
    .setIssuer(claims.iss)
    .setIssuedAt(now)
    .setExpirationTime(now + (claims.ttlSeconds ?? 3600));
  if (claims.aud !== undefined) jwt = jwt.setAudience(claims.aud);
  return jwt.sign(key.privateKey);
}

/**
 * A local HTTP server standing in for an identity provider's JWKS endpoint (and for any URL a
 * token's header may name): serves `{ keys }` at every path, counts the requests, and can fail
 * on purpose. Closed when the test ends.
 */
export class JwksServer {
  keys: JWK[] = [];
  /** Requests received, in order (their paths). */
  readonly requests: string[] = [];
  /** Answer 503 instead of the keys (a provider that is up but failing). */
  failing = false;
  /** Answer this many ms late (a slow provider). */
  delayMs = 0;
  private server: Server | undefined;

  private constructor(private port: number) {}

  /** Starts listening on `port` (0: any free one). */
  static async start(port = 0): Promise<JwksServer> {
    const jwks = new JwksServer(port);
    await jwks.listen();
    onTestFinished(() => jwks.stop());
    return jwks;
  }

  /** A server that will listen on a port nothing listens on yet (a provider down at start). */
  static async notYetListening(port: number): Promise<JwksServer> {
    const jwks = new JwksServer(port);
    onTestFinished(() => jwks.stop());
    return jwks;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}/realms/test/protocol/openid-connect/certs`;
  }

  async listen(): Promise<void> {
    const server = createServer((req, res) => {
      this.requests.push(req.url ?? "");
      const answer = () => {
        if (this.failing) {
          res.writeHead(503).end();
          return;
        }
        res.writeHead(200, { "content-type": "application/jwk-set+json" });
        res.end(JSON.stringify({ keys: this.keys }));
      };
      if (this.delayMs > 0) setTimeout(answer, this.delayMs);
      else answer();
    });
    await new Promise<void>((resolve) => server.listen(this.port, "127.0.0.1", resolve));
    this.port = (server.address() as AddressInfo).port;
    this.server = server;
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (server === undefined) return;
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  }
}

/** The answer to a WebSocket upgrade: 101, or the status and body of a refusal. */
export interface UpgradeAnswer {
  readonly status: number;
  readonly body: string;
}

/**
 * Sends a real WebSocket upgrade request and reports the answer without keeping the socket: a
 * refusal's body carries the reason (`Unauthorized: token expired.`), which TestClient hides.
 */
export function upgrade(
  wsUrl: string,
  options: { token?: string; origin?: string } = {},
): Promise<UpgradeAnswer> {
  const url = new URL(wsUrl.replace(/^ws/, "http"));
  if (options.token !== undefined) url.searchParams.set("token", options.token);
  return new Promise((resolve, reject) => {
    const req = request(url, {
      headers: {
        connection: "Upgrade",
        upgrade: "websocket",
        "sec-websocket-key": randomBytes(16).toString("base64"),
        "sec-websocket-version": "13",
        ...(options.origin === undefined ? {} : { origin: options.origin }),
      },
    });
    req.on("upgrade", (response, socket) => {
      socket.destroy();
      resolve({ status: response.statusCode ?? 0, body: "" });
    });
    req.on("response", (response) => {
      let body = "";
      response.setEncoding("utf8");
      response.on("data", (chunk: string) => {
        body += chunk;
      });
      response.on("end", () => resolve({ status: response.statusCode ?? 0, body }));
    });
    req.on("error", reject);
    req.end();
  });
}
