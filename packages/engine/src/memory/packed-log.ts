import { Buffer } from "node:buffer";

/**
 * An append-only log of rows kept outside the V8 heap. A row is a few numbers and, when the log
 * holds texts, two strings (a message's id and its stored JSON) encoded as UTF-8. Rows live in
 * one Float64Array and texts in one byte buffer, so a log is a handful of objects however many
 * rows it holds.
 *
 * Why not an array of objects: the memory engine keeps up to maxEntries messages per
 * conversation and inbox for up to RETENTION_DAYS. As objects and strings, every stored message
 * outlived the young generation: at 10,000 messages/s each scavenge copied that period's
 * messages (10–40 ms pauses once the heap neared 600 MB) and every marking walked them all.
 * Those pauses were the single node's p99. Rows here cost the collector nothing.
 *
 * Keeps at most `cap` newest rows. Dropping from the head is O(1) amortised: the head index
 * moves, and the kept rows are copied into right-sized storage once the dropped part outweighs
 * them, which also gives memory back after retention drops most of a log.
 */
export class PackedLog {
  /** Numbers per row: the caller's columns, then (with texts) the end offsets of id and text. */
  private readonly stride: number;
  private rows: Float64Array;
  private bytes: Buffer;
  /** Physical index of the oldest kept row; rows before it are dropped, awaiting compaction. */
  private head = 0;
  /** Physical rows written, kept or dropped. */
  private size = 0;

  /**
   * @param columns numbers per row, read and written by column index (0 to columns - 1)
   * @param withTexts whether each row also holds an id and a text
   */
  constructor(
    private readonly columns: number,
    private readonly withTexts: boolean,
    private readonly cap: number,
  ) {
    this.stride = columns + (withTexts ? 2 : 0);
    this.rows = new Float64Array(INITIAL_ROWS * this.stride);
    this.bytes = Buffer.allocUnsafeSlow(withTexts ? INITIAL_BYTES : 0);
  }

  get length(): number {
    return this.size - this.head;
  }

  /** Appends a row without texts; returns its index. Set its numbers with {@link set}. */
  push(): number {
    if (this.withTexts) throw new Error("this log holds texts: use pushTexts");
    return this.append(0);
  }

  /** Appends a row with its id and text; returns its index. Set its numbers with {@link set}. */
  pushTexts(id: string, text: string): number {
    if (!this.withTexts) throw new Error("this log holds no texts: use push");
    // At most 3 UTF-8 bytes per UTF-16 unit: room is checked before encoding, without measuring.
    const index = this.append(3 * (id.length + text.length));
    const row = (this.head + index) * this.stride + this.columns;
    let end = this.textStart(this.head + index);
    end += this.bytes.write(id, end);
    this.rows[row] = end;
    end += this.bytes.write(text, end);
    this.rows[row + 1] = end;
    return index;
  }

  /** Column `column` of the row at `index` (0 is the oldest kept). */
  get(index: number, column: number): number {
    return this.rows[(this.head + index) * this.stride + column] as number;
  }

  set(index: number, column: number, value: number): void {
    this.rows[(this.head + index) * this.stride + column] = value;
  }

  id(index: number): string {
    const physical = this.head + index;
    const idEnd = this.rows[physical * this.stride + this.columns] as number;
    return this.bytes.toString("utf8", this.textStart(physical), idEnd);
  }

  text(index: number): string {
    const row = (this.head + index) * this.stride + this.columns;
    return this.bytes.toString("utf8", this.rows[row] as number, this.rows[row + 1] as number);
  }

  /** Drops rows from the head while `predicate` holds for the oldest kept row's index (0). */
  dropWhile(predicate: (log: PackedLog) => boolean): void {
    while (this.length > 0 && predicate(this)) this.head++;
    this.compactIfMostlyDropped();
  }

  private append(maxBytes: number): number {
    if (this.length === this.cap) {
      this.head++;
      this.compactIfMostlyDropped();
    }
    const rowsFull = (this.size + 1) * this.stride > this.rows.length;
    const bytesFull = this.bytesUsed() + maxBytes > this.bytes.length;
    if (rowsFull || bytesFull) {
      const kept = this.length;
      const keptBytes = this.bytesUsed() - this.textStart(this.head);
      this.reallocate(
        rowsFull ? Math.max(INITIAL_ROWS, 2 * (kept + 1)) : this.rows.length / this.stride,
        bytesFull ? Math.max(INITIAL_BYTES, 2 * (keptBytes + maxBytes)) : this.bytes.length,
      );
    }
    this.size++;
    return this.length - 1;
  }

  /** Moves the kept rows into fresh storage once the dropped ones are at least half. */
  private compactIfMostlyDropped(): void {
    if (this.head < COMPACT_AFTER || this.head * 2 < this.size) return;
    const kept = this.length;
    const keptBytes = this.bytesUsed() - this.textStart(this.head);
    this.reallocate(
      Math.max(INITIAL_ROWS, 2 * kept),
      this.withTexts ? Math.max(INITIAL_BYTES, 2 * keptBytes) : 0,
    );
  }

  /** Copies the kept rows and their texts to the start of new storage of the given capacity. */
  private reallocate(rowCapacity: number, byteCapacity: number): void {
    const rows = new Float64Array(rowCapacity * this.stride);
    rows.set(this.rows.subarray(this.head * this.stride, this.size * this.stride));
    let bytes = this.bytes;
    if (this.withTexts) {
      const shift = this.textStart(this.head);
      bytes = Buffer.allocUnsafeSlow(byteCapacity);
      this.bytes.copy(bytes, 0, shift, this.bytesUsed());
      if (shift > 0) {
        const end = (this.size - this.head) * this.stride;
        for (let offsets = this.columns; offsets < end; offsets += this.stride) {
          rows[offsets] = (rows[offsets] as number) - shift;
          rows[offsets + 1] = (rows[offsets + 1] as number) - shift;
        }
      }
    }
    this.rows = rows;
    this.bytes = bytes;
    this.size -= this.head;
    this.head = 0;
  }

  /** Where the physical row's texts begin: right after the previous row's. */
  private textStart(physical: number): number {
    return physical === 0 ? 0 : (this.rows[physical * this.stride - 1] as number);
  }

  private bytesUsed(): number {
    return this.withTexts ? this.textStart(this.size) : 0;
  }
}

const INITIAL_ROWS = 8;
const INITIAL_BYTES = 1024;
/** Dropped rows are left in place until there are this many, so small logs are not copied often. */
const COMPACT_AFTER = 64;
