import type { Logger } from "../chat/ports.js";
import type { NodeMetrics } from "./metrics.js";
import type { UnsentWatcher, WsTransport } from "./ws-transport.js";

/**
 * How often the budget recounts the node's unsent bytes exactly (bytes the kernel took since the
 * last write are not seen by the running total until then).
 *
 * Why not the send path: summing every connection's buffer on each send would make every message
 * cost O(connections). Instead each write batch reports the connections the kernel did not take
 * everything from (one bufferedAmount read per connection per batch; a healthy reader has 0 and
 * costs nothing more), the budget keeps a running total of their deltas, and only a batch that
 * takes the total over the budget triggers a recount, O(connections with unsent bytes). So a
 * burst of large answers is caught in the batch that writes it, not up to a period later; the
 * timer only corrects the total downward as clients read. Each connection's own 8 MiB limit
 * (MAX_BUFFERED_BYTES) still applies on every send.
 */
export const UNSENT_CHECK_MS = 250;

/**
 * The node-wide budget of unsent bytes (MAX_UNSENT_BYTES): when the bytes written to clients but
 * not yet taken by the kernel add up to more, the clients holding the most are closed as slow
 * readers (1013, then destroyed if that cannot be written; see WsTransport.closeSlowReader), the
 * largest first, until the rest fits. Readers that keep up are never touched: they hold nothing.
 */
export class UnsentBudget implements UnsentWatcher {
  /** Connections that had unsent bytes after a write, until a recount finds them empty. */
  private readonly backlogged = new Set<WsTransport>();
  /** The sum of the backlogged connections' `unsentCounted`: exact after a recount, else an upper bound. */
  private total = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly maxBytes: number,
    metrics: NodeMetrics,
    private readonly log: Logger,
  ) {
    this.timer = setInterval(() => this.recount(), UNSENT_CHECK_MS);
    this.timer.unref();
    metrics.countUnsentWith(() => this.total);
  }

  observe(transport: WsTransport, bytes: number): void {
    if (!transport.watched) {
      transport.watched = true;
      this.backlogged.add(transport);
    }
    // Those already closed as slow readers are not counted (see recount).
    if (transport.closingAsSlowReader) return;
    this.total += bytes - transport.unsentCounted;
    transport.unsentCounted = bytes;
  }

  afterBatch(): void {
    if (this.total > this.maxBytes) this.recount();
  }

  /** The connection closed: its buffers are gone, and this set must not keep it alive. */
  forget(transport: WsTransport): void {
    if (!transport.watched) return;
    this.total -= transport.unsentCounted;
    transport.unsentCounted = 0;
    transport.watched = false;
    this.backlogged.delete(transport);
  }

  /** Adds up the unsent bytes exactly and, over budget, closes the largest holders. */
  recount(): void {
    let total = 0;
    let holders: WsTransport[] | undefined;
    for (const transport of this.backlogged) {
      const bytes = transport.bufferedAmount;
      if (bytes === 0) {
        this.forget(transport);
        continue;
      }
      // Already closed as slow readers: their bytes go within the grace; counting them would
      // close more clients than needed.
      transport.unsentCounted = transport.closingAsSlowReader ? 0 : bytes;
      total += transport.unsentCounted;
      if (transport.unsentCounted > 0) {
        holders ??= [];
        holders.push(transport);
      }
    }
    this.total = total;
    if (total <= this.maxBytes || holders === undefined) return;
    // Only over budget, which a healthy node never is: the sort costs it nothing.
    holders.sort((a, b) => b.unsentCounted - a.unsentCounted);
    let closed = 0;
    for (const transport of holders) {
      if (this.total <= this.maxBytes) break;
      this.total -= transport.unsentCounted;
      transport.unsentCounted = 0;
      transport.closeSlowReader("node_budget");
      closed++;
    }
    this.log.warn(
      { unsentBytes: total, maxUnsentBytes: this.maxBytes, closed },
      "over the unsent-bytes budget: closed the slowest readers",
    );
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
