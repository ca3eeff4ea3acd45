/**
 * Paces WebSocket upgrades so that a storm of them cannot take the node from the users already on
 * it (UPGRADE_TURN_BUDGET_MS).
 *
 * An upgrade costs a node about a millisecond of CPU (the token, the handshake, the session and
 * its registration), a message a few tens of microseconds. When the clients of a dead node come
 * back, a node reads hundreds of upgrade requests in one turn of its event loop and, unpaced,
 * does all of them before it reads anything else: every message of its connected users waits
 * behind them (test/upgrade-pacing.test.ts: a message that reached the node with 400 upgrade
 * requests was answered after all 400 unpaced, after 3 to 5 paced).
 *
 * Paced, the upgrades handled in one turn of the event loop stop once they have taken
 * `budgetMs`; the rest wait, in arrival order, and go on in the next turns, a budget's worth per
 * turn (at least one), after the node has read its sockets in between. Nothing is refused: an
 * upgrade waits instead (at most `maxWaiting` of them; past that they get 503). On a node with
 * nothing else to do, turns follow each other at once, and the storm goes as fast as unpaced.
 *
 * "Taken": the time since the first upgrade of the turn began, which also counts what the node
 * did in between (it is busy either way). A waiting upgrade is released by a `setImmediate` of
 * its own: Node runs the promise continuations of one immediate before the next, so each
 * released upgrade's work (up to its first real wait, on Redis) is done before the next is
 * weighed against the budget.
 */

/** Released upgrades queued per turn at most; the budget usually stops a turn before. */
const RELEASES_PER_TURN = 64;

/** What `admit` says: go on now, wait for the promise, or refuse (too many are waiting). */
export type Admission = "now" | "full" | Promise<void>;

export class UpgradePacer {
  /** performance.now() when this turn's first upgrade began; undefined between turns. */
  private turnStartedAt: number | undefined;
  private turnEndQueued = false;
  /** The waiting upgrades' resolvers, oldest first from `head`. */
  private waiting: (() => void)[] = [];
  private head = 0;
  private stopped = false;

  /** `budgetMs` 0 turns pacing off. */
  constructor(
    private readonly budgetMs: number,
    private readonly maxWaiting: number,
  ) {}

  /** Upgrades waiting for a later turn. */
  get waitingCount(): number {
    return this.waiting.length - this.head;
  }

  /** Called as an upgrade begins (before its token is checked). */
  admit(): Admission {
    if (this.budgetMs <= 0 || this.stopped) return "now";
    if (this.waitingCount === 0) {
      const now = performance.now();
      if (this.turnStartedAt === undefined) {
        this.turnStartedAt = now;
        this.queueTurnEnd();
      }
      if (now - this.turnStartedAt < this.budgetMs) return "now";
    }
    if (this.waitingCount >= this.maxWaiting) return "full";
    this.queueTurnEnd();
    return new Promise<void>((resolve) => this.waiting.push(resolve));
  }

  /** Lets every waiting upgrade go on (they find the node closing), and stops pacing. */
  stop(): void {
    this.stopped = true;
    while (this.waitingCount > 0) this.releaseOne();
  }

  private queueTurnEnd(): void {
    if (this.turnEndQueued) return;
    this.turnEndQueued = true;
    setImmediate(this.endTurn);
  }

  /**
   * After a turn's I/O (the check phase): a new turn begins for the upgrades, and as many
   * releases as may fit in its budget are queued for the next check phase, the next turn's end
   * behind them.
   */
  private readonly endTurn = (): void => {
    this.turnEndQueued = false;
    this.turnStartedAt = undefined;
    const releases = Math.min(this.waitingCount, RELEASES_PER_TURN);
    if (releases === 0) return;
    for (let i = 0; i < releases; i++) setImmediate(this.releaseIfBudgetLeft);
    this.queueTurnEnd();
  };

  private readonly releaseIfBudgetLeft = (): void => {
    if (this.waitingCount === 0) return;
    const now = performance.now();
    this.turnStartedAt ??= now;
    if (now - this.turnStartedAt >= this.budgetMs) return; // the next turn's
    this.releaseOne();
  };

  private releaseOne(): void {
    const resolve = this.waiting[this.head] as () => void;
    this.head++;
    if (this.head === this.waiting.length) {
      this.waiting = [];
      this.head = 0;
    } else if (this.head >= 1024 && this.head * 2 >= this.waiting.length) {
      // Drop the released part now and then, so that a long storm does not keep it.
      this.waiting = this.waiting.slice(this.head);
      this.head = 0;
    }
    resolve();
  }
}
