import type { Engine } from "@mrezhen/engine";
import { ErrorCode } from "@mrezhen/protocol";
import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";
import type { ChatMetrics } from "../chat/ports.js";

const COMMAND_TYPES = ["direct_message", "get_history", "get_online_users", "ping", "invalid"];

/**
 * The node's Prometheus metrics, in a registry of its own (several nodes can share a process in
 * tests). Every labelled series is bound once up front, so counting on the per-message path is
 * a property increment, with no label lookup.
 */
export class NodeMetrics implements ChatMetrics {
  readonly registry = new Registry();
  private readonly framesIn = new Map<string, Counter.Internal>();
  private readonly errors = new Map<string, Counter.Internal>();
  private readonly acks: Record<"delivered" | "queued", Counter.Internal>;
  private readonly ackSeconds: Histogram;
  private readonly delivered: Counter;
  private readonly rateLimited: Counter;
  private readonly sent: Counter;

  /** Reads the open connections at scrape time; set once the hub exists. */
  private connections: () => number = () => 0;

  constructor(nodeId: string, engine: Engine) {
    const registers = [this.registry];
    this.registry.setDefaultLabels({ node_id: nodeId });
    collectDefaultMetrics({ register: this.registry, prefix: "mrezhen_process_" });

    const connections = () => this.connections();
    new Gauge({
      name: "mrezhen_connections",
      help: "Open WebSocket connections on this node.",
      registers,
      collect() {
        this.set(connections());
      },
    });
    new Gauge({
      name: "mrezhen_engine_up",
      help: "1 when the engine (Redis, or memory) can serve, else 0.",
      registers,
      collect() {
        this.set(engine.health().ok ? 1 : 0);
      },
    });
    const framesIn = new Counter({
      name: "mrezhen_frames_in_total",
      help: "Frames read from clients, by command type (invalid: refused by validation).",
      labelNames: ["type"],
      registers,
    });
    for (const type of COMMAND_TYPES) this.framesIn.set(type, framesIn.labels(type));
    this.sent = new Counter({
      name: "mrezhen_frames_out_total",
      help: "Frames written to clients.",
      registers,
    });
    const errors = new Counter({
      name: "mrezhen_errors_total",
      help: "Error frames sent to clients, by code.",
      labelNames: ["code"],
      registers,
    });
    for (const code of Object.values(ErrorCode)) this.errors.set(code, errors.labels(code));
    this.rateLimited = new Counter({
      name: "mrezhen_rate_limited_total",
      help: "Direct messages refused by the rate limit.",
      registers,
    });
    const acks = new Counter({
      name: "mrezhen_messages_acked_total",
      help: "Direct messages stored and acked, by status (delivered: recipient online; queued: offline).",
      labelNames: ["status"],
      registers,
    });
    this.acks = { delivered: acks.labels("delivered"), queued: acks.labels("queued") };
    this.delivered = new Counter({
      name: "mrezhen_messages_delivered_total",
      help: "Messages written live to a connection on this node.",
      registers,
    });
    this.ackSeconds = new Histogram({
      name: "mrezhen_send_latency_seconds",
      help: "From reading a direct_message to acking it: rate limit, store and route.",
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    });
  }

  countConnectionsWith(count: () => number): void {
    this.connections = count;
  }

  frameIn(type: string): void {
    this.framesIn.get(type)?.inc();
  }

  frameOut(): void {
    this.sent.inc();
  }

  error(code: string): void {
    this.errors.get(code)?.inc();
    if (code === ErrorCode.RATE_LIMITED) this.rateLimited.inc();
  }

  acked(status: "delivered" | "queued", seconds: number): void {
    this.acks[status].inc();
    this.ackSeconds.observe(seconds);
  }

  deliveredLive(): void {
    this.delivered.inc();
  }
}
