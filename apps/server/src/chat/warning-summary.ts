import type { Logger } from "./ports.js";

/** How often, at most, one kind of summarised warning is logged. */
export const SUMMARY_WINDOW_MS = 1000;

/**
 * One warning line per window for something that happens to many connections at once, with a
 * count, instead of a line per connection. When 19,000 connections lost their Redis link in the
 * same second, a line each buried the one line that said why (and cost the node more than the
 * failures themselves). The first occurrence after a quiet window starts one; the line is
 * written when it ends, with the count and the last error seen.
 */
export class WarningSummary {
  private count = 0;
  private lastError: unknown;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly log: Logger,
    private readonly message: string,
    private readonly windowMs = SUMMARY_WINDOW_MS,
  ) {}

  /** Counts `count` occurrences (with the error that caused them, if any). */
  note(error?: unknown, count = 1): void {
    this.count += count;
    if (error !== undefined) this.lastError = error;
    if (this.timer !== undefined) return;
    this.timer = setTimeout(this.flush, this.windowMs);
    // A pending line never keeps a stopping process alive; flush() writes it on the way out.
    this.timer.unref();
  }

  /** Writes the pending line now, if there is one (at shutdown). */
  readonly flush = (): void => {
    clearTimeout(this.timer);
    this.timer = undefined;
    if (this.count === 0) return;
    const count = this.count;
    const error = this.lastError;
    this.count = 0;
    this.lastError = undefined;
    this.log.warn(error === undefined ? { count } : { count, err: error }, this.message);
  };
}
