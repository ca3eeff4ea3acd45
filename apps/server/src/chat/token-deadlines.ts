/**
 * The open sessions by the next moment their token needs attention (the `token_expiring` notice,
 * then the expiry), in buckets of the sweep's interval, so that a sweep visits only the
 * sessions that are due.
 *
 * Why not one pass over every session each interval, as before: it cost an idle node CPU in
 * proportion to its connections every second (about half of the CPU of an idle node holding
 * 19,000 connections, more than its heartbeat), and in a connect storm that CPU is taken from
 * the upgrades. Why not a timer per session: a timer is memory on every idle connection.
 * Buckets cost one number per session and one Set per interval that has a deadline in it.
 */

/** What the schedule needs of a session (Session implements it). */
export interface TokenHolder {
  /** When the `token_expiring` notice is due (ms since the epoch), 0 once it was sent. */
  readonly expiringNoticeAt: number;
  /** When the token expires (ms since the epoch). */
  readonly expiresAt: number;
  /** The bucket this session is in, -1 when in none: the schedule's own bookkeeping. */
  tokenBucket: number;
}

export class TokenDeadlines<T extends TokenHolder> {
  private readonly buckets = new Map<number, Set<T>>();
  /** The first bucket not yet taken by due(). */
  private next: number;

  constructor(
    /** The width of a bucket: the sweep's interval, so that a sweep takes about one. */
    private readonly bucketMs: number,
    now: number,
  ) {
    this.next = Math.floor(now / bucketMs);
  }

  /** (Re)schedules `holder` at its next deadline: the notice if not yet sent, else the expiry. */
  schedule(holder: T): void {
    this.unschedule(holder);
    const at = holder.expiringNoticeAt !== 0 ? holder.expiringNoticeAt : holder.expiresAt;
    // A deadline already past (or in a bucket already taken) goes to the next sweep.
    const bucket = Math.max(this.next, Math.floor(at / this.bucketMs));
    let holders = this.buckets.get(bucket);
    if (holders === undefined) {
      holders = new Set();
      this.buckets.set(bucket, holders);
    }
    holders.add(holder);
    holder.tokenBucket = bucket;
  }

  /** Takes `holder` out (its connection closed). */
  unschedule(holder: T): void {
    const bucket = holder.tokenBucket;
    if (bucket < 0) return;
    holder.tokenBucket = -1;
    const holders = this.buckets.get(bucket);
    if (holders === undefined) return;
    holders.delete(holder);
    if (holders.size === 0) this.buckets.delete(bucket);
  }

  /**
   * Takes out and returns every holder whose bucket began at or before `now`. Some may be due a
   * moment after `now` (late in the current bucket): the caller checks each deadline and
   * schedules again those not yet due, which then come with the next sweep.
   */
  due(now: number): T[] {
    const last = Math.floor(now / this.bucketMs);
    const taken: T[] = [];
    if (last < this.next) return taken;
    // After a long pause (or a jump of the clock) many buckets may have passed: going through
    // the few that exist beats counting through every empty one.
    if (last - this.next < this.buckets.size) {
      for (let key = this.next; key <= last; key++) this.take(key, taken);
    } else {
      for (const key of [...this.buckets.keys()]) if (key <= last) this.take(key, taken);
    }
    this.next = last + 1;
    return taken;
  }

  private take(key: number, taken: T[]): void {
    const holders = this.buckets.get(key);
    if (holders === undefined) return;
    this.buckets.delete(key);
    for (const holder of holders) {
      holder.tokenBucket = -1;
      taken.push(holder);
    }
  }

  /** Sessions scheduled (for tests). */
  get size(): number {
    let size = 0;
    for (const holders of this.buckets.values()) size += holders.size;
    return size;
  }
}
