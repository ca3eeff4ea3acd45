/**
 * `new Date(ms).toISOString()`, for the timestamp of every message (and pong). V8 formats an ISO
 * date with snprintf: about 7,000 instructions a call, a tenth of what a whole message cost the
 * memory engine below saturation (callgrind), 1-2 µs here. Everything up to the seconds changes
 * once a second, so it is formatted once a second and kept; a call then appends the milliseconds.
 */
let cachedSecond = Number.NaN;
/** `YYYY-MM-DDTHH:mm:ss.` of cachedSecond. */
let cachedPrefix = "";

/** The largest time a Date holds, either side of the epoch. */
const MAX_TIME = 8.64e15;

export function isoTimestamp(ms: number): string {
  // Outside Date's range (or NaN), toISOString throws: let it, as before.
  if (!(ms >= -MAX_TIME && ms <= MAX_TIME)) return new Date(ms).toISOString();
  // Date truncates a fractional time (TimeClip).
  const time = Math.trunc(ms);
  const second = Math.floor(time / 1000);
  if (second !== cachedSecond) {
    const iso = new Date(second * 1000).toISOString();
    cachedSecond = second;
    // Whatever the year's width (±YYYYYY beyond 9999), the ISO text ends in `.sssZ`.
    cachedPrefix = iso.slice(0, -4);
  }
  const milli = time - second * 1000;
  return `${cachedPrefix}${milli < 10 ? "00" : milli < 100 ? "0" : ""}${milli}Z`;
}
