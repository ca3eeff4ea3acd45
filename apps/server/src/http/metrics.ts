import type { Engine } from "@mrezhen/engine";
import { CLIENT_COMMAND_TYPES, ErrorCode } from "@mrezhen/protocol";
import { collectDefaultMetrics, type Metric, Registry } from "prom-client";
import type { ChatMetrics } from "../chat/ports.js";

/** Frames counted by type: every command a client may send, and the ones that do not parse. */
const COMMAND_TYPES = [...CLIENT_COMMAND_TYPES, "invalid"] as const;

/** Why an upgrade was refused with an HTTP status instead of becoming a WebSocket. */
export const REFUSAL_REASONS = [
  "draining",
  "bad_request",
  "unauthorized",
  "forbidden_origin",
  "user_limit",
  "node_limit",
  "overloaded",
] as const;
export type RefusalReason = (typeof REFUSAL_REASONS)[number];

/**
 * What closed a slow reader: its own unsent bytes over the per-connection limit, or the node's
 * unsent bytes over MAX_UNSENT_BYTES (it was among the largest).
 */
export type SlowReaderTrigger = "connection" | "node_budget";

const NON_COUNTERS_NAMED_TOTAL = [
  "nodejs_active_handles_total",
  "nodejs_active_requests_total",
  "nodejs_active_resources_total",
];

/** Upper bounds (seconds) of the send-latency histogram's buckets. */
const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];

export type Sample = {
  value: number;
  labels?: Record<string, string | number>;
  metricName?: string;
};

/**
 * The node's Prometheus metrics, in a registry of its own (several nodes can share a process in
 * tests). Counting happens on the per-message path, so it is a plain field increment: no label
 * hashing, no allocation (prom-client's own counters do both on every inc). The values are
 * turned into Prometheus samples only when /metrics is scraped.
 */
export class NodeMetrics implements ChatMetrics {
  readonly registry = new Registry();
  private readonly framesIn = new Map<string, { count: number }>(
    COMMAND_TYPES.map((type) => [type, { count: 0 }]),
  );
  private readonly errors = new Map<string, { count: number }>(
    Object.values(ErrorCode).map((code) => [code, { count: 0 }]),
  );
  private framesOut = 0;
  private readonly acks = { delivered: 0, queued: 0 };
  private delivered = 0;
  private flushed = 0;
  private rateLimited = 0;
  private readonly latencyBuckets = new Float64Array(LATENCY_BUCKETS.length);
  private latencySum = 0;
  private latencyCount = 0;
  /** Reads the open connections at scrape time; set once the hub exists. */
  private connections: () => number = () => 0;
  private readonly refusals = new Map<RefusalReason, { count: number }>(
    REFUSAL_REASONS.map((reason) => [reason, { count: 0 }]),
  );
  private readonly slowReaders = { connection: 0, node_budget: 0 };
  /** Reads the unsent bytes the last budget check found; set once the budget exists. */
  private unsent: () => number = () => 0;

  constructor(nodeId: string, engine: Engine) {
    this.registry.setDefaultLabels({ node_id: nodeId });
    // prom-client's own names (process_cpu_seconds_total, nodejs_eventloop_lag_seconds, ...), no
    // prefix: they are what off-the-shelf Node.js dashboards and alerts query.
    collectDefaultMetrics({ register: this.registry });
    // Except three gauges named like counters, which `promtool check metrics` rejects (and
    // Prometheus' rate() would misread): each is the sum of its labelled twin, e.g.
    // sum(nodejs_active_handles) for nodejs_active_handles_total.
    for (const name of NON_COUNTERS_NAMED_TOTAL) this.registry.removeSingleMetric(name);
    this.expose("mrezhen_connections", "Open WebSocket connections on this node.", "gauge", () => [
      { value: this.connections() },
    ]);
    this.expose(
      "mrezhen_engine_up",
      "1 when the engine (Redis, or memory) can serve, else 0.",
      "gauge",
      () => [{ value: engine.health().ok ? 1 : 0 }],
    );
    this.expose(
      "mrezhen_frames_in_total",
      "Frames read from clients, by command type (invalid: refused by validation).",
      "counter",
      () => [...this.framesIn].map(([type, { count }]) => ({ value: count, labels: { type } })),
    );
    this.expose("mrezhen_frames_out_total", "Frames written to clients.", "counter", () => [
      { value: this.framesOut },
    ]);
    this.expose("mrezhen_errors_total", "Error frames sent to clients, by code.", "counter", () =>
      [...this.errors].map(([code, { count }]) => ({ value: count, labels: { code } })),
    );
    this.expose(
      "mrezhen_rate_limited_total",
      "Direct messages refused by the rate limit.",
      "counter",
      () => [{ value: this.rateLimited }],
    );
    this.expose(
      "mrezhen_messages_acked_total",
      "Direct messages stored and acked, by status (delivered: recipient online; queued: offline).",
      "counter",
      () => [
        { value: this.acks.delivered, labels: { status: "delivered" } },
        { value: this.acks.queued, labels: { status: "queued" } },
      ],
    );
    this.expose(
      "mrezhen_messages_delivered_total",
      "Messages written live to a connection on this node.",
      "counter",
      () => [{ value: this.delivered }],
    );
    this.expose(
      "mrezhen_upgrades_refused_total",
      "WebSocket upgrades refused with an HTTP status, by reason (user_limit: 429, node_limit and draining: 503, unauthorized: 401, forbidden_origin: 403, bad_request: 400).",
      "counter",
      () => [...this.refusals].map(([reason, { count }]) => ({ value: count, labels: { reason } })),
    );
    this.expose(
      "mrezhen_slow_reader_closes_total",
      "Connections closed with 1013 for not reading, by trigger (connection: over its own limit; node_budget: among the largest when the node was over MAX_UNSENT_BYTES).",
      "counter",
      () => [
        { value: this.slowReaders.connection, labels: { trigger: "connection" } },
        { value: this.slowReaders.node_budget, labels: { trigger: "node_budget" } },
      ],
    );
    this.expose(
      "mrezhen_unsent_bytes",
      "Bytes written to connections and not yet taken by the kernel, as the unsent-bytes budget counts them (recounted every 250 ms).",
      "gauge",
      () => [{ value: this.unsent() }],
    );
    this.expose(
      "mrezhen_offline_flushed_total",
      "Messages sent from offline queues to connections coming online on this node (a flush cut " +
        "short sends its unconfirmed rest again). Against " +
        'mrezhen_messages_acked_total{status="queued"} (messages put in), summed over nodes, ' +
        "it tells whether the queues grow.",
      "counter",
      () => [{ value: this.flushed }],
    );
    const { commandErrors } = engine;
    if (commandErrors !== undefined) {
      this.expose(
        "mrezhen_redis_command_errors_total",
        "Redis commands that failed, by kind (unavailable: connection down, timeout or a " +
          "retryable reply such as LOADING or OOM; reply: refused as wrong, a bug). Per process.",
        "counter",
        () => {
          const { unavailable, reply } = commandErrors.call(engine);
          return [
            { value: unavailable, labels: { kind: "unavailable" } },
            { value: reply, labels: { kind: "reply" } },
          ];
        },
      );
    }
    this.expose(
      "mrezhen_send_latency_seconds",
      "From reading a direct_message to acking it: rate limit, store and route.",
      "histogram",
      () => this.latencySamples(),
    );
  }

  countConnectionsWith(count: () => number): void {
    this.connections = count;
  }

  countUnsentWith(bytes: () => number): void {
    this.unsent = bytes;
  }

  refusedUpgrade(reason: RefusalReason): void {
    const counter = this.refusals.get(reason);
    if (counter !== undefined) counter.count++;
  }

  slowReaderClosed(trigger: SlowReaderTrigger): void {
    this.slowReaders[trigger]++;
  }

  frameIn(type: string): void {
    const counter = this.framesIn.get(type);
    if (counter !== undefined) counter.count++;
  }

  frameOut(): void {
    this.framesOut++;
  }

  error(code: string): void {
    const counter = this.errors.get(code);
    if (counter !== undefined) counter.count++;
    if (code === ErrorCode.RATE_LIMITED) this.rateLimited++;
  }

  acked(status: "delivered" | "queued", seconds: number): void {
    this.acks[status]++;
    this.latencySum += seconds;
    this.latencyCount++;
    for (let i = 0; i < LATENCY_BUCKETS.length; i++) {
      if (seconds <= (LATENCY_BUCKETS[i] as number)) {
        (this.latencyBuckets[i] as number)++;
        break;
      }
    }
  }

  deliveredLive(): void {
    this.delivered++;
  }

  queueFlushed(messages: number): void {
    this.flushed += messages;
  }

  /** Cumulative buckets, +Inf, sum and count, as the Prometheus histogram type wants them. */
  private latencySamples(): Sample[] {
    const name = "mrezhen_send_latency_seconds";
    const samples: Sample[] = [];
    let cumulative = 0;
    LATENCY_BUCKETS.forEach((le, i) => {
      cumulative += this.latencyBuckets[i] as number;
      samples.push({ metricName: `${name}_bucket`, labels: { le }, value: cumulative });
    });
    samples.push({
      metricName: `${name}_bucket`,
      labels: { le: "+Inf" },
      value: this.latencyCount,
    });
    samples.push({ metricName: `${name}_sum`, value: this.latencySum });
    samples.push({ metricName: `${name}_count`, value: this.latencyCount });
    return samples;
  }

  /**
   * Registers a metric whose samples are read from plain fields at scrape time (or, for the
   * webhook queue's depth, from the engine).
   */
  expose(
    name: string,
    help: string,
    type: "counter" | "gauge" | "histogram",
    samples: () => Sample[] | Promise<Sample[]>,
  ): void {
    const metric = {
      name,
      help,
      type,
      aggregator: "sum",
      get: async () => ({ name, help, type, aggregator: "sum", values: await samples() }),
      reset: () => {},
    };
    // prom-client types registerMetric() with its own Metric class, but its registry needs only
    // name, help, type and get() (lib/registry.js): the cast states that narrower contract.
    this.registry.registerMetric(metric as unknown as Metric);
  }
}
