import type { Transport } from "./ports.js";

/**
 * Paces a replay (the offline-queue flush, a sync) by what the client has received, not by what
 * the node has written: after each page the transport is asked to confirm receipt (a ping and its
 * pong), and a new page is written only while fewer than `size` pages are unconfirmed. So a
 * backlog of any size goes out at the client's pace, a few pages on the wire at a time, and never
 * piles up in the node's socket buffer, where the slow-reader limit would drop the connection
 * (which is what a 9 MB queue did before: it was written in one turn).
 */
export class ReceiptWindow {
  private readonly unconfirmed: { readonly upTo: number; readonly received: Promise<boolean> }[] =
    [];
  /** The last position of the newest page the client confirmed (0 before any). */
  confirmedUpTo = 0;

  constructor(
    private readonly transport: Transport,
    private readonly size: number,
  ) {}

  /**
   * Ends a page whose last position is `upTo`, and waits while `size` pages are unconfirmed.
   * Resolves false once the connection has closed: stop writing.
   */
  async endPage(upTo: number): Promise<boolean> {
    this.unconfirmed.push({ upTo, received: this.transport.whenReceived() });
    while (this.unconfirmed.length >= this.size) if (!(await this.confirmOldest())) return false;
    return true;
  }

  /** Waits until every page is confirmed; false if the connection closed first. */
  async drain(): Promise<boolean> {
    while (this.unconfirmed.length > 0) if (!(await this.confirmOldest())) return false;
    return true;
  }

  private async confirmOldest(): Promise<boolean> {
    const page = this.unconfirmed.shift();
    if (page === undefined) return true;
    if (!(await page.received)) return false;
    this.confirmedUpTo = page.upTo;
    return true;
  }
}
