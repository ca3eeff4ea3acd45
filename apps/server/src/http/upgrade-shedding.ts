/**
 * Refuses new WebSocket upgrades while this node's event loop runs late (UPGRADE_SHED_LAG_MS),
 * so that a storm of connects cannot take the node from the users already on it.
 *
 * An upgrade costs a node about a millisecond of CPU, a message a few tens of microseconds: when
 * thousands of clients reconnect at once (a node died, a deploy), a node reads hundreds of
 * upgrades in one turn of its event loop, and every message of its connected users waits behind
 * them (a reconnect storm took other users' p99 from 45 ms to over a second). Refused early, with
 * `503` and `Retry-After`, an upgrade costs a fraction of that, and the client comes back a moment
 * later (to this node or, behind nginx, to another: see its proxy_next_upstream).
 *
 * "Late" is measured two ways: how late the last tick of a short timer ran (the turns before it
 * were long), and how long it has been overdue now (this turn is long: the upgrades read later in
 * it are refused, not all of them). Nothing per connection, one timer per node.
 *
 * Off by default: in the benchmark's reconnect storm it helped on a loaded machine and not on a
 * quiet one (bench/RESULTS.md, "Connection storms"), and a client that does not retry takes the
 * 503 for a failure.
 */
const TICK_MS = 50;

export class UpgradeShedding {
  private lastTickAt = performance.now();
  /** How late (ms) the last tick ran. */
  private lateMs = 0;
  private readonly timer: NodeJS.Timeout | undefined;

  /** `limitMs` 0 turns shedding off. */
  constructor(private readonly limitMs: number) {
    if (limitMs <= 0) return;
    this.timer = setInterval(() => {
      const now = performance.now();
      this.lateMs = now - this.lastTickAt - TICK_MS;
      this.lastTickAt = now;
    }, TICK_MS);
    this.timer.unref();
  }

  /** Whether an upgrade read now should be refused. */
  get overloaded(): boolean {
    if (this.timer === undefined) return false;
    const overdue = performance.now() - this.lastTickAt - TICK_MS;
    return Math.max(this.lateMs, overdue) > this.limitMs;
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
