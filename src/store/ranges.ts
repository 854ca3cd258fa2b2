import type { Store } from './store.js';

/**
 * Hands out unique numbers from ranges claimed in the store. The current range lives in
 * memory; when fewer than `lowWater` numbers remain, the next range is claimed ahead of
 * time. A crash wastes at most the rest of the claimed ranges; a number is never reused.
 */
export class RangeAllocator {
  private next = 0;
  private end = 0;
  private pending: { start: number; end: number } | null = null;
  private claiming: Promise<void> | null = null;

  constructor(
    private readonly store: Store,
    private readonly name: string,
    private readonly increment: () => number,
    private readonly lowWater: () => number,
  ) {}

  /** Next number. Fast path is synchronous work on memory; the store is touched once per range. */
  async take(): Promise<number> {
    for (;;) {
      const n = this.takeSync();
      if (n !== null) return n;
      await this.claiming; // takeSync started the claim; a failed claim rejects here
    }
  }

  /** A number without waiting, or null when the store must be asked first (a claim is then started). */
  takeSync(): number | null {
    if (this.next >= this.end && this.pending) {
      this.next = this.pending.start;
      this.end = this.pending.end;
      this.pending = null;
    }
    if (this.next < this.end) {
      const n = this.next++;
      if (this.remaining() < this.lowWater()) this.prefetch();
      return n;
    }
    this.prefetch();
    return null;
  }

  private prefetch(): void {
    if (this.claiming || this.pending) return;
    this.claiming = this.store
      .claimRange(this.name, this.increment())
      .then((r) => {
        this.pending = r;
      })
      .finally(() => {
        this.claiming = null;
      });
    this.claiming.catch(() => {
      /* surfaced to the caller awaiting it */
    });
  }

  /** Numbers left in memory (current plus claimed-ahead). */
  remaining(): number {
    return this.end - this.next + (this.pending ? this.pending.end - this.pending.start : 0);
  }
}
