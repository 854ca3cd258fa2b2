import { randomFillSync } from 'node:crypto';

/**
 * CSPRNG bytes drawn in blocks: one randomFillSync per 4 KiB instead of one per call. Each
 * call into OpenSSL's generator costs ~10 µs (locks, context lookups), more than the few bytes
 * a serial, an ID or an audit entry needs, and a join used three of them. Each byte is handed
 * out once, then wiped from the pool. Server workers are separate processes (not fork(2)
 * copies), so no two hold the same pool.
 */
const POOL_BYTES = 4096;
const pool = Buffer.alloc(POOL_BYTES);
let poolUsed = POOL_BYTES;

/** Fill `out[offset, offset + n)` with random bytes from the pool. */
export function randomInto(out: Buffer, offset: number, n: number): void {
  if (n > POOL_BYTES) {
    randomFillSync(out, offset, n);
    return;
  }
  if (poolUsed + n > POOL_BYTES) {
    randomFillSync(pool);
    poolUsed = 0;
  }
  pool.copy(out, offset, poolUsed, poolUsed + n);
  pool.fill(0, poolUsed, poolUsed + n);
  poolUsed += n;
}

/** `n` random bytes from the pool (a new buffer). */
export function pooledRandomBytes(n: number): Buffer {
  const out = Buffer.alloc(n);
  randomInto(out, 0, n);
  return out;
}
