import { createHmac, timingSafeEqual } from "node:crypto";

/**
 * Standard Webhooks signatures (https://www.standardwebhooks.com): `v1,<base64 of
 * HMAC-SHA256(key, "<id>.<timestamp>.<body>")>`. A secret of the form `whsec_<base64>` is the
 * base64 key (what the Standard Webhooks libraries expect); any other secret is used as its
 * UTF-8 bytes.
 */
export function webhookKey(secret: string): Buffer {
  return secret.startsWith("whsec_")
    ? Buffer.from(secret.slice("whsec_".length), "base64")
    : Buffer.from(secret, "utf8");
}

export function signWebhook(key: Buffer, id: string, timestamp: number, body: string): string {
  const mac = createHmac("sha256", key).update(`${id}.${timestamp}.${body}`).digest("base64");
  return `v1,${mac}`;
}

/**
 * What a receiver does (the README's snippet, as code the tests run): checks one of the
 * space-separated signatures and that the timestamp is within `toleranceS` of now (replays of
 * old deliveries are refused; a receiver also remembers ids it processed).
 */
export function verifyWebhook(
  key: Buffer,
  headers: { id: string; timestamp: string; signature: string },
  body: string,
  toleranceS = 300,
  nowS = Math.floor(Date.now() / 1000),
): boolean {
  const timestamp = Number(headers.timestamp);
  if (!Number.isInteger(timestamp) || Math.abs(nowS - timestamp) > toleranceS) return false;
  const expected = Buffer.from(signWebhook(key, headers.id, timestamp, body));
  return headers.signature.split(" ").some((candidate) => {
    const given = Buffer.from(candidate);
    return given.length === expected.length && timingSafeEqual(given, expected);
  });
}
