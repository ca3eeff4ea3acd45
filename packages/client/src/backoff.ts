/** The first retry waits up to this long (ms)… */
export const BACKOFF_MIN_MS = 500;
/** …and no retry waits longer than this (ms). */
export const BACKOFF_MAX_MS = 20_000;

/**
 * "Full jitter" exponential backoff: a random delay between 0 and min(max, min × 2^attempt).
 * Randomising the whole range, not a ±20% band, spreads the clients of a node that went away over
 * the window instead of bringing them all back together.
 * See https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/.
 *
 * @example
 * backoffDelay(0); // 0..500 ms
 * backoffDelay(6); // 0..20 000 ms
 */
export function backoffDelay(
  attempt: number,
  random: () => number = Math.random,
  min = BACKOFF_MIN_MS,
  max = BACKOFF_MAX_MS,
): number {
  return Math.floor(random() * Math.min(max, min * 2 ** Math.min(attempt, 30)));
}
