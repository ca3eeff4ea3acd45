import {
  type CryptoKey,
  createRemoteJWKSet,
  customFetch,
  errors,
  type FlattenedJWSInput,
  type JWSHeaderParameters,
} from "jose";
import type { Logger } from "../chat/ports.js";
import { AuthError } from "./errors.js";

/** A request to the identity provider that takes longer than this is given up (jose's default). */
const FETCH_TIMEOUT_MS = 5000;

export interface JwksOptions {
  readonly url: URL;
  /** At most one request to `url` per this many milliseconds, whatever happens. */
  readonly cooldownMs: number;
  /** The set is fetched again (in the background) once it is this old. */
  readonly cacheMaxAgeMs: number;
  readonly log: Logger;
}

/** What /ready reports about the key set. */
export interface JwksStatus {
  /** The set has been fetched at least once (its keys are usable). */
  readonly fetched: boolean;
  /** Why the last request failed, when it did. */
  readonly lastError: string | undefined;
}

/**
 * An identity provider's published keys (JWT_JWKS_URL), through jose's createRemoteJWKSet: keys
 * chosen by `kid` and `alg`, the set fetched again when a token names a `kid` it does not hold
 * (at most once per cooldown). Around it, what jose leaves to the caller:
 *
 * - **At most one request per cooldown, including failures.** jose's cooldown counts from the
 *   last successful fetch: while the provider is down (or before the first fetch), every token
 *   with a JWKS key would make a request. Every request here goes through `gatedFetch`, which
 *   refuses (without touching the network) to make a second one within the cooldown.
 * - **Stale keys rather than none.** jose refetches an old set inline and fails every token when
 *   that fetch fails. Here jose never considers the set old (cacheMaxAge is infinite); a timer
 *   refreshes it in the background every cacheMaxAgeMs, and a failed refresh keeps the keys we
 *   have, so a provider outage does not log everybody out. A removed key goes with the next
 *   successful refresh, or at once when a token with an unknown `kid` makes jose refetch.
 * - **Start without the provider.** The node starts at once and fetches in the background,
 *   retrying every cooldown until it succeeds; meanwhile JWKS tokens are refused (401 "signing
 *   keys unavailable") and /ready says so.
 */
export class JwksKeys {
  private readonly set: ReturnType<typeof createRemoteJWKSet>;
  private readonly cooldownMs: number;
  private readonly cacheMaxAgeMs: number;
  private readonly log: Logger;
  private readonly timer: NodeJS.Timeout;
  /** When the last request started (ms since the epoch), and when one last answered 200. */
  private lastAttemptAt = Number.NEGATIVE_INFINITY;
  private lastOkAt = Number.NEGATIVE_INFINITY;
  private lastError: string | undefined;

  constructor(options: JwksOptions) {
    this.cooldownMs = options.cooldownMs;
    this.cacheMaxAgeMs = options.cacheMaxAgeMs;
    this.log = options.log;
    this.set = createRemoteJWKSet(options.url, {
      cooldownDuration: options.cooldownMs,
      cacheMaxAge: Number.POSITIVE_INFINITY,
      timeoutDuration: FETCH_TIMEOUT_MS,
      [customFetch]: (url, init) => this.gatedFetch(url, init),
    });
    // One timer per node (not per token or connection): the first fetch, retries while the
    // provider is down, and the periodic refresh.
    this.timer = setInterval(() => this.tick(), Math.max(100, this.cooldownMs));
    this.timer.unref();
    this.tick();
  }

  get status(): JwksStatus {
    return { fetched: this.set.jwks() !== undefined, lastError: this.lastError };
  }

  /** The key for a token's header, or an AuthError with a reason safe to show. */
  async key(header: JWSHeaderParameters, token: FlattenedJWSInput): Promise<CryptoKey> {
    if (this.set.jwks() === undefined) {
      // Never fetched. The first request may be on its way (the node has just started): wait
      // for it, as jose would. Otherwise refuse at once rather than try inline (the gate would
      // refuse the request anyway); the background retry brings the keys.
      if (this.set.reloading) await this.set.reload().catch(() => undefined);
      if (this.set.jwks() === undefined) throw new AuthError("signing keys unavailable");
    }
    try {
      return (await this.set(header, token)) as CryptoKey;
    } catch (error) {
      if (error instanceof errors.JWKSMultipleMatchingKeys) {
        throw new AuthError("ambiguous signing key");
      }
      // No key we hold matches (JWKSNoMatchingKey), and the refetch that caused was refused by
      // the cooldown or failed, or found none either.
      throw new AuthError("unknown signing key");
    }
  }

  close(): void {
    clearInterval(this.timer);
  }

  /** Fetches when the set was never fetched, or is older than cacheMaxAgeMs. */
  private tick(): void {
    const now = Date.now();
    if (this.set.jwks() !== undefined && now - this.lastOkAt < this.cacheMaxAgeMs) return;
    if (now - this.lastAttemptAt < this.cooldownMs) return;
    // A failure is logged by gatedFetch (a refusal by the gate is not worth a line).
    this.set.reload().catch(() => undefined);
  }

  /**
   * Every request to the provider, from jose's refetches and ours: refused locally when the last
   * one started less than a cooldown ago, so no pattern of tokens can make more.
   */
  private async gatedFetch(
    url: string,
    init: { headers: Headers; method: "GET"; redirect: "manual"; signal: AbortSignal },
  ): Promise<Response> {
    const now = Date.now();
    if (now - this.lastAttemptAt < this.cooldownMs) {
      throw new errors.JOSEError("JWKS request skipped: cooling down");
    }
    this.lastAttemptAt = now;
    try {
      const response = await fetch(url, init);
      if (response.status === 200) {
        this.lastOkAt = now;
        if (this.lastError !== undefined) this.log.info({}, "the JWKS answers again");
        this.lastError = undefined;
      } else {
        this.failed(`HTTP ${response.status}`);
      }
      return response;
    } catch (error) {
      this.failed(error instanceof Error ? error.message : String(error));
      throw error;
    }
  }

  private failed(reason: string): void {
    const first = this.lastError === undefined;
    this.lastError = reason;
    // One line per failed request, and requests are at most one per cooldown.
    this.log.warn(
      { jwksError: reason, keysHeld: this.set.jwks() !== undefined },
      first
        ? "cannot fetch the JWKS: tokens signed by the identity provider's keys are refused until it answers (keys already fetched keep working)"
        : "cannot fetch the JWKS",
    );
  }
}
