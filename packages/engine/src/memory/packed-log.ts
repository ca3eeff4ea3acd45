import { Buffer } from "node:buffer";

/**
 * An append-only log of rows kept outside the V8 heap. A row is a few numbers and, when the log
 * holds texts, two strings (a message's id and its stored JSON) encoded as UTF-8. Rows live in
 * chunks: a Float64Array of numbers and a byte buffer of texts each, so a log is a few objects
 * however many rows it holds.
 *
 * Why not an array of objects: the memory engine keeps up to maxEntries messages per
 * conversation and inbox for up to RETENTION_DAYS. As objects and strings, every stored message
 * outlived the young generation: at 10,000 messages/s each scavenge copied that period's
 * messages (10–40 ms pauses once the heap neared 600 MB) and every marking walked them all.
 *
 * Why chunks, from a shared pool, and not one array doubled as it grows: typed arrays live
 * outside the heap, but V8 counts them as external memory and starts a full collection when it
 * grows fast. Doubling (and compacting once the head is dropped) allocated twice what the logs
 * hold, in bursts; at a steady 10,000 messages/s that meant a full collection every 200 ms.
 * Chunks are never copied, and a chunk dropped from a log's head goes back to the pool for the
 * next one, so a node whose logs are trimmed as fast as they grow allocates nothing new.
 *
 * Keeps at most `cap` newest rows; dropping from the head is O(1) amortised.
 */
export class PackedLog {
  /** Numbers per row: the caller's columns, then (with texts) the end offsets of id and text. */
  private readonly stride: number;
  private readonly chunks: Chunk[] = [];
  /** Row numbers count every row pushed since the log was made: the oldest kept, the next. */
  private first = 0;
  private next = 0;
  /** Where the last lookup found its row (set by locate, to avoid returning a pair). */
  private foundChunk!: Chunk;
  private foundRow = 0;

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
  }

  get length(): number {
    return this.next - this.first;
  }

  /** Appends a row without texts; returns its index. Its numbers are 0 until {@link set}. */
  push(): number {
    if (this.withTexts) throw new Error("this log holds texts: use pushTexts");
    const chunk = this.lastWithRoom(0) ?? this.newChunk(0);
    chunk.rows.fill(0, chunk.count * this.stride, chunk.count * this.stride + this.columns);
    chunk.count++;
    return this.appended();
  }

  /** Appends a row with its id and text; returns its index. Its numbers are 0 until {@link set}. */
  pushTexts(id: string, text: string): number {
    if (!this.withTexts) throw new Error("this log holds no texts: use push");
    // At most 3 UTF-8 bytes per UTF-16 unit: room is usually checked without measuring. When that
    // bound does not fit the last chunk, the texts are measured, so a new chunk is sized to what
    // they take, not to three times it (a 30 KB message reserved 128 KiB that way).
    const bound = 3 * (id.length + text.length);
    let chunk = this.lastWithRoom(bound);
    if (chunk === undefined) {
      const exact = Buffer.byteLength(id) + Buffer.byteLength(text);
      chunk = this.lastWithRoom(exact) ?? this.newChunk(exact);
    }
    const offsets = chunk.count * this.stride + this.columns;
    // Chunks are reused: a new row's numbers start at 0, not at what a dropped row left.
    chunk.rows.fill(0, offsets - this.columns, offsets);
    let end = chunk.used;
    end += chunk.bytes.write(id, end);
    chunk.rows[offsets] = end;
    end += chunk.bytes.write(text, end);
    chunk.rows[offsets + 1] = end;
    chunk.used = end;
    chunk.count++;
    return this.appended();
  }

  /** Column `column` of the row at `index` (0 is the oldest kept). */
  get(index: number, column: number): number {
    this.locate(index);
    return this.foundChunk.rows[this.foundRow * this.stride + column] as number;
  }

  set(index: number, column: number, value: number): void {
    this.locate(index);
    this.foundChunk.rows[this.foundRow * this.stride + column] = value;
  }

  id(index: number): string {
    this.locate(index);
    const { rows, bytes } = this.foundChunk;
    const offsets = this.foundRow * this.stride + this.columns;
    // A row's texts start where the previous row's in the same chunk end.
    const start = this.foundRow === 0 ? 0 : (rows[offsets - this.stride + 1] as number);
    return bytes.toString("utf8", start, rows[offsets] as number);
  }

  text(index: number): string {
    this.locate(index);
    const { rows, bytes } = this.foundChunk;
    const offsets = this.foundRow * this.stride + this.columns;
    return bytes.toString("utf8", rows[offsets] as number, rows[offsets + 1] as number);
  }

  /** Drops rows from the head while `predicate` holds for the oldest kept row's index (0). */
  dropWhile(predicate: (log: PackedLog) => boolean): void {
    while (this.length > 0 && predicate(this)) this.dropFirst();
  }

  private appended(): number {
    this.next++;
    if (this.length > this.cap) this.dropFirst();
    return this.length - 1;
  }

  private dropFirst(): void {
    this.first++;
    const head = this.chunks[0] as Chunk;
    if (this.first >= head.start + head.count) {
      this.chunks.shift();
      release(head);
    }
  }

  /** The last chunk if it has room for one more row and `bytes` of texts. */
  private lastWithRoom(bytes: number): Chunk | undefined {
    const last = this.chunks[this.chunks.length - 1];
    if (
      last !== undefined &&
      (last.count + 1) * this.stride <= last.rows.length &&
      last.used + bytes <= last.bytes.length
    ) {
      return last;
    }
    return undefined;
  }

  /** A new last chunk with room for at least one row and `bytes` of texts. */
  private newChunk(bytes: number): Chunk {
    // Chunks grow with the log (about its length, from 4 to 256 rows), so a short log stays small
    // and a long one has few chunks. Row arrays and the text buffers of ordinary rows are powers
    // of two; a row larger than its chunk's usual text room gets a buffer of the next size class
    // above it (at most 1/8 more), so one large message no longer reserves a power of two. The
    // classes are few (8 per doubling), so the pool still serves them.
    const rows = Math.min(MAX_CHUNK_ROWS, Math.max(MIN_CHUNK_ROWS, powerOfTwoAtLeast(this.length)));
    const chunk: Chunk = {
      start: this.next,
      count: 0,
      used: 0,
      rows: new Float64Array(take(rows * this.stride * 8)),
      bytes: this.withTexts ? Buffer.from(take(sizeClass(bytes, rows * BYTES_PER_ROW))) : EMPTY,
    };
    reservedBytes += chunk.rows.byteLength + chunk.bytes.length;
    this.chunks.push(chunk);
    return chunk;
  }

  /** Finds the chunk and row of the row at `index`: the last chunk first, else a binary search. */
  private locate(index: number): void {
    const row = this.first + index;
    let low = 0;
    let high = this.chunks.length - 1;
    let chunk = this.chunks[high] as Chunk;
    if (row < chunk.start) {
      high--;
      while (low < high) {
        const middle = (low + high + 1) >> 1;
        if ((this.chunks[middle] as Chunk).start <= row) low = middle;
        else high = middle - 1;
      }
      chunk = this.chunks[low] as Chunk;
    }
    this.foundChunk = chunk;
    this.foundRow = row - chunk.start;
  }
}

/** Consecutive rows and their texts. */
interface Chunk {
  /** The row number of its first row. */
  readonly start: number;
  /** Rows written. */
  count: number;
  /** Bytes of text written. */
  used: number;
  readonly rows: Float64Array;
  readonly bytes: Buffer;
}

const MIN_CHUNK_ROWS = 4;
const MAX_CHUNK_ROWS = 256;
/** Text bytes a chunk has per row it holds (a stored 64-character message takes about 250). */
const BYTES_PER_ROW = 256;
const EMPTY = Buffer.alloc(0);

function powerOfTwoAtLeast(n: number): number {
  return n <= 1 ? 1 : 2 ** Math.ceil(Math.log2(n));
}

/**
 * A text buffer size for `bytes`: `usual` (a power of two) when they fit in it, else the
 * smallest of 9/16, 10/16, ..., 16/16 of the next power of two that holds them.
 */
function sizeClass(bytes: number, usual: number): number {
  if (bytes <= usual) return usual;
  const power = powerOfTwoAtLeast(bytes);
  const step = power / 16;
  return Math.ceil(bytes / step) * step;
}

/**
 * Bytes of storage (row arrays and text buffers) held by the memory engine's logs, all engines
 * of the process together; chunks kept in the pool for reuse are not counted.
 */
export function memoryStoredBytes(): number {
  return reservedBytes;
}

// The pool: storage of dropped chunks by size, shared by every log of the process.

const pool = new Map<number, ArrayBuffer[]>();
let pooledBytes = 0;
/** See memoryStoredBytes. */
let reservedBytes = 0;
/** Past this, dropped chunks are left to the collector (after a mass expiry, say). */
const MAX_POOLED_BYTES = 64 * 1024 * 1024;

function take(size: number): ArrayBuffer {
  const reused = pool.get(size)?.pop();
  if (reused === undefined) return new ArrayBuffer(size);
  pooledBytes -= size;
  return reused;
}

function release(chunk: Chunk): void {
  reservedBytes -= chunk.rows.byteLength + chunk.bytes.length;
  give(chunk.rows.buffer as ArrayBuffer);
  if (chunk.bytes !== EMPTY) give(chunk.bytes.buffer as ArrayBuffer);
}

function give(buffer: ArrayBuffer): void {
  if (pooledBytes + buffer.byteLength > MAX_POOLED_BYTES) return;
  let free = pool.get(buffer.byteLength);
  if (free === undefined) {
    free = [];
    pool.set(buffer.byteLength, free);
  }
  free.push(buffer);
  pooledBytes += buffer.byteLength;
}
