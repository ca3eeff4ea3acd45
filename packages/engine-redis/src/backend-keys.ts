/**
 * Keys and channels of the server API's state (revocations) and of the webhook event queue. Kept
 * apart from keys.ts, whose layout is being reworked; the same rules hold (every name starts
 * with the prefix; a variable part, if any, is last).
 *
 * | key / channel                     | type    | contents                                     |
 * |-----------------------------------|---------|----------------------------------------------|
 * | `<p>revoked`                      | hash    | user → revoked-before time (ms); no TTL †     |
 * | `<p>revocations` (channel)        | pub/sub | `<before>\|<userId>` after each revoke       |
 * | `<p>webhook-events`               | stream  | service events (field `e`: JSON); consumer   |
 * |                                   |         | group `webhooks`, a consumer per node id;    |
 * |                                   |         | entries are deleted once delivered or given  |
 * |                                   |         | up, so its length is the queue's depth       |
 * | `<p>webhook-presence-version`     | string  | the highest presence version queued (dedupe) |
 *
 * † A revocation must outlive every token it refuses, and the node does not know the longest
 * lifetime the issuer gives tokens (`exp` is the issuer's choice, and may be weeks): so no TTL.
 * It is one hash field per user ever revoked (tens of bytes), which every node loads at start.
 */
export class BackendKeys {
  readonly revoked: string;
  readonly revocationChannel: string;
  readonly events: string;
  readonly presenceVersionQueued: string;
  readonly group = "webhooks";

  constructor(prefix: string, cluster = false) {
    // Redis Cluster: what one script touches in one slot. REVOKE writes `revoked` and publishes
    // on `revocations` (a sharded channel, which Redis checks like a key): tag `{r}`;
    // QUEUE_PRESENCE_EVENT writes the stream and its version: tag `{w}`.
    const r = cluster ? `${prefix}{r}` : prefix;
    const w = cluster ? `${prefix}{w}` : prefix;
    this.revoked = `${r}revoked`;
    this.revocationChannel = `${r}revocations`;
    this.events = `${w}webhook-events`;
    this.presenceVersionQueued = `${w}webhook-presence-version`;
  }
}
