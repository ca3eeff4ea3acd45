/**
 * An append-only list that keeps at most `cap` newest items and drops from its head in O(1): a
 * start index moves, and the array is compacted only once the dropped part outweighs the rest.
 * (Array#splice at the head would shift every item, on every append once the cap is reached.)
 */
export class BoundedLog<T> {
  private items: T[] = [];
  private start = 0;

  constructor(private readonly cap: number) {}

  get length(): number {
    return this.items.length - this.start;
  }

  push(item: T): void {
    this.items.push(item);
    if (this.length > this.cap) this.dropFirst(this.length - this.cap);
  }

  /** The item at logical index `index` (0 is the oldest kept). */
  at(index: number): T | undefined {
    return index >= 0 && index < this.length ? this.items[this.start + index] : undefined;
  }

  first(): T | undefined {
    return this.at(0);
  }

  last(): T | undefined {
    return this.at(this.length - 1);
  }

  /** Items from logical index `from` (inclusive) to `to` (exclusive). */
  slice(from: number, to: number = this.length): T[] {
    return this.items.slice(this.start + Math.max(0, from), this.start + Math.min(to, this.length));
  }

  /** Drops items from the head while `predicate` holds. */
  dropWhile(predicate: (item: T) => boolean): void {
    let count = 0;
    while (count < this.length && predicate(this.items[this.start + count] as T)) count++;
    this.dropFirst(count);
  }

  *[Symbol.iterator](): IterableIterator<T> {
    for (let i = this.start; i < this.items.length; i++) yield this.items[i] as T;
  }

  private dropFirst(count: number): void {
    if (count <= 0) return;
    this.start += count;
    if (this.start >= 1024 && this.start * 2 >= this.items.length) {
      this.items = this.items.slice(this.start);
      this.start = 0;
    }
  }
}
