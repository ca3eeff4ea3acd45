import type { EventQueue, QueuedEvent } from "@mrezhen/engine";
import type { Logger } from "../chat/ports.js";
import type { NodeMetrics } from "../http/metrics.js";
import { signWebhook, webhookKey } from "./sign.js";

export interface WebhookOptions {
  readonly url: string;
  readonly secret: string;
  /** Events older than this are given up (dropped, counted and logged). */
  readonly maxAgeMs: number;
  /** The first retry's delay; each retry doubles it, up to retryMaxMs, with jitter. */
  readonly retryBaseMs: number;
  readonly retryMaxMs: number;
  /** One delivery attempt's deadline. */
  readonly timeoutMs: number;
  /** An event a worker held unacknowledged this long is taken over by another node's worker. */
  readonly claimIdleMs: number;
}

/** Deliveries in flight (and waiting to retry) per node, at most. */
const MAX_IN_FLIGHT = 64;
/** How long one take() waits for new events. */
const TAKE_WAIT_MS = 1000;
/** After the queue failed (engine down), wait this long before asking again. */
const QUEUE_ERROR_PAUSE_MS = 1000;

type Outcome = "delivered" | "retry" | "rejected";

/**
 * Delivers the queue's events to WEBHOOK_URL, at least once, signed (Standard Webhooks).
 *
 * - An event is acknowledged (removed from the queue) only after a 2xx answer; a node that dies
 *   with events in hand leaves them pending, and another node's worker takes them over once
 *   they are idle for claimIdleMs (so each event may arrive more than once, always with the
 *   same `webhook-id`).
 * - A 5xx, 408 or 429 answer, a timeout or a refused connection is retried with exponential
 *   backoff and full jitter (a delay drawn between half and all of min(retryMaxMs,
 *   retryBaseMs × 2^attempt)); while waiting, the worker keeps the event claimed
 *   (EventQueue.keep) so that no other node takes it over. Any other answer (a 4xx: the
 *   receiver refuses this event) drops it, counted and logged.
 * - An event older than maxAgeMs is dropped, counted and logged.
 * - Order: presence events of one user are delivered one after the other by a worker (a
 *   retrying one holds back the later ones: head-of-line per user). Across a takeover, order
 *   may break; each presence event carries `data.version`, which grows with every change:
 *   receivers keep the highest version per user and ignore older ones. Messages carry their
 *   conversation `seq` likewise.
 */
export class WebhookWorker {
  delivered = 0;
  failed = 0;
  retried = 0;
  dropped = { max_age: 0, rejected: 0 };

  private readonly key: Buffer;
  private running = false;
  private loop: Promise<void> | undefined;
  /** Events in hand (delivering, or waiting to retry), by entry id. */
  private readonly held = new Set<string>();
  /** The tail of each user's chain of presence deliveries (head-of-line per user). */
  private readonly chains = new Map<string, Promise<void>>();
  private keepTimer: NodeJS.Timeout | undefined;
  private slotFreed: (() => void) | undefined;
  private readonly timers = new Set<NodeJS.Timeout>();

  constructor(
    private readonly queue: EventQueue,
    private readonly options: WebhookOptions,
    private readonly log: Logger,
  ) {
    this.key = webhookKey(options.secret);
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this.loop = this.run();
    // Keeps what this worker holds from looking abandoned: well within the claim timeout.
    this.keepTimer = setInterval(
      () => {
        if (this.held.size === 0) return;
        this.queue.keep([...this.held]).catch(() => {});
      },
      Math.max(50, Math.floor(this.options.claimIdleMs / 3)),
    );
    this.keepTimer.unref();
  }

  /** Stops taking events; what is in hand stays pending in the queue for the next worker. */
  async stop(): Promise<void> {
    this.running = false;
    clearInterval(this.keepTimer);
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
    this.slotFreed?.();
    await this.loop;
  }

  /** Counters and the queue's gauges, at scrape time. */
  registerMetrics(metrics: NodeMetrics): void {
    metrics.expose(
      "mrezhen_webhook_delivered_total",
      "Webhook events delivered (answered 2xx) by this node.",
      "counter",
      () => [{ value: this.delivered }],
    );
    metrics.expose(
      "mrezhen_webhook_failed_total",
      "Webhook delivery attempts that failed (5xx, 4xx, timeout, connection refused).",
      "counter",
      () => [{ value: this.failed }],
    );
    metrics.expose(
      "mrezhen_webhook_retried_total",
      "Webhook deliveries scheduled again after a failed attempt.",
      "counter",
      () => [{ value: this.retried }],
    );
    metrics.expose(
      "mrezhen_webhook_dropped_total",
      "Webhook events given up: older than WEBHOOK_MAX_AGE (max_age), or refused with a 4xx (rejected).",
      "counter",
      () => [
        { value: this.dropped.max_age, labels: { reason: "max_age" } },
        { value: this.dropped.rejected, labels: { reason: "rejected" } },
      ],
    );
    const stats = () =>
      this.queue.stats().catch(() => ({ depth: Number.NaN, oldestAgeMs: Number.NaN }));
    metrics.expose(
      "mrezhen_webhook_queue_depth",
      "Webhook events queued and not yet delivered, cluster-wide (the same on every node).",
      "gauge",
      async () => [{ value: (await stats()).depth }],
    );
    metrics.expose(
      "mrezhen_webhook_oldest_pending_seconds",
      "Age of the oldest webhook event not yet delivered, cluster-wide.",
      "gauge",
      async () => [{ value: (await stats()).oldestAgeMs / 1000 }],
    );
  }

  private async run(): Promise<void> {
    while (this.running) {
      if (this.held.size >= MAX_IN_FLIGHT) {
        await new Promise<void>((resolve) => {
          this.slotFreed = resolve;
        });
        this.slotFreed = undefined;
        continue;
      }
      let events: QueuedEvent[];
      try {
        events = await this.queue.take(
          MAX_IN_FLIGHT - this.held.size,
          TAKE_WAIT_MS,
          this.options.claimIdleMs,
        );
      } catch (error) {
        if (!this.running) return;
        this.log.warn({ err: error }, "webhook queue unavailable; retrying");
        await this.sleep(QUEUE_ERROR_PAUSE_MS);
        continue;
      }
      for (const event of events) this.dispatch(event);
    }
  }

  private dispatch(event: QueuedEvent): void {
    if (this.held.has(event.entryId)) return; // already in hand (taken again after a keep failed)
    this.held.add(event.entryId);
    const user = presenceUser(event.payload);
    const work =
      user === undefined
        ? this.deliver(event)
        : (this.chains.get(user) ?? Promise.resolve()).then(() => this.deliver(event));
    if (user !== undefined) {
      this.chains.set(user, work);
      void work.then(() => {
        if (this.chains.get(user) === work) this.chains.delete(user);
      });
    }
    void work.finally(() => {
      this.held.delete(event.entryId);
      this.slotFreed?.();
    });
  }

  /** Attempts until delivered, refused, too old, or the worker stops. Never rejects. */
  private async deliver(event: QueuedEvent): Promise<void> {
    const id = eventId(event.payload) ?? event.entryId;
    for (let attempt = 0; this.running; attempt++) {
      if (Date.now() - event.publishedAt > this.options.maxAgeMs) {
        this.dropped.max_age++;
        this.log.warn(
          { eventId: id, ageMs: Date.now() - event.publishedAt, attempts: attempt },
          "webhook event dropped: older than WEBHOOK_MAX_AGE",
        );
        await this.acknowledge(event);
        return;
      }
      const outcome = await this.attempt(id, event.payload);
      if (outcome === "delivered") {
        this.delivered++;
        await this.acknowledge(event);
        return;
      }
      this.failed++;
      if (outcome === "rejected") {
        this.dropped.rejected++;
        await this.acknowledge(event);
        return;
      }
      this.retried++;
      const ceiling = Math.min(this.options.retryMaxMs, this.options.retryBaseMs * 2 ** attempt);
      await this.sleep(ceiling / 2 + Math.random() * (ceiling / 2));
    }
  }

  private async attempt(id: string, body: string): Promise<Outcome> {
    const timestamp = Math.floor(Date.now() / 1000);
    try {
      const response = await fetch(this.options.url, {
        method: "POST",
        headers: {
          "content-type": "application/json",
          "webhook-id": id,
          "webhook-timestamp": String(timestamp),
          "webhook-signature": signWebhook(this.key, id, timestamp, body),
        },
        body,
        signal: AbortSignal.timeout(this.options.timeoutMs),
        redirect: "manual",
      });
      // The body is not needed; reading it frees the connection for reuse.
      await response.arrayBuffer().catch(() => {});
      if (response.status >= 200 && response.status < 300) return "delivered";
      if (response.status >= 500 || response.status === 408 || response.status === 429)
        return "retry";
      this.log.warn(
        { eventId: id, status: response.status },
        "webhook receiver refused an event; dropped",
      );
      return "rejected";
    } catch (error) {
      // Timeouts, refused and reset connections: the receiver is down or slow, not refusing.
      this.log.debug({ err: error, eventId: id }, "webhook delivery failed; will retry");
      return "retry";
    }
  }

  private async acknowledge(event: QueuedEvent): Promise<void> {
    try {
      await this.queue.acknowledge([event.entryId]);
    } catch (error) {
      // Stays pending: another worker takes it over later and delivers it again (same id).
      this.log.warn(
        { err: error },
        "could not acknowledge a webhook event; it may be delivered again",
      );
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.timers.delete(timer);
        resolve();
      }, ms);
      timer.unref();
      this.timers.add(timer);
    });
  }
}

/** The user of a presence event (`"type":"user.…"`), or undefined for other events. */
function presenceUser(payload: string): string | undefined {
  if (!payload.includes('"type":"user.')) return undefined;
  try {
    const { data } = JSON.parse(payload) as { data?: { userId?: unknown } };
    return typeof data?.userId === "string" ? data.userId : undefined;
  } catch {
    return undefined;
  }
}

function eventId(payload: string): string | undefined {
  const match = /^\{"id":"([^"]+)"/.exec(payload);
  return match?.[1];
}
