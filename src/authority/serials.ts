/**
 * How a certificate serial is made, everywhere cairn makes one.
 *
 * A serial is 16 bytes: a marker bit and a 62-bit sequence number that is unique, then 8
 * random bytes (`makeSerial` in pki/serial.ts, pure). The sequence number comes from:
 *
 * - an online CA (any replica): the store's `serial` sequence, claimed in ranges by each
 *   replica (`RangeAllocator`, store/ranges.ts) so that replicas never hand out the same
 *   number and a crash wastes at most one range;
 * - the roots `init` creates: sequence numbers 1 and 2 (leaves start at FIRST_LEAF_SEQUENCE);
 * - a controller sharing CA keys with another (init --from-pkcs12, restore --root-ca-only):
 *   a random block of 2^32 numbers far above the other's (`cloneSerialStart`);
 * - the offline CA (`cairn ca`): a counter file beside the CA key, under a lock directory
 *   (`nextOfflineSequence`).
 */
import fs from 'node:fs';
import path from 'node:path';
import { randomInt } from 'node:crypto';
import { makeSerial } from '../pki/index.js';
import { RangeAllocator } from '../store/ranges.js';
import type { Store } from '../store/store.js';
import { CairnError } from '../util/errors.js';
import { exists, FILE_MODE, readText, writeFilesAtomic } from '../util/files.js';

/** Sequence numbers of the two roots `init` creates; leaves start after them. */
export const ROOT_SEQUENCES = { cluster: 1n, client: 2n } as const;
export const FIRST_LEAF_SEQUENCE = 16;

/** Serials for one replica: 16-byte serials over store-claimed ranges of the `serial` sequence. */
export class SerialSource {
  private readonly ranges: RangeAllocator;

  constructor(store: Store, settings: () => { serialRangeIncrement: number; serialRangeLowWater: number }) {
    this.ranges = new RangeAllocator(
      store,
      'serial',
      () => settings().serialRangeIncrement,
      () => settings().serialRangeLowWater,
    );
  }

  async next(): Promise<Buffer> {
    return makeSerial(BigInt(await this.ranges.take()));
  }
}

/**
 * The sequences a new cluster starts with: serials after the roots (or, for a controller
 * sharing CA keys with another, in a block of its own), request IDs, the revocation mark.
 */
export async function startSequences(tx: Store, o: { sharesCaKeys: boolean }): Promise<void> {
  await tx.ensureSequence('serial', o.sharesCaKeys ? cloneSerialStart(FIRST_LEAF_SEQUENCE) : FIRST_LEAF_SEQUENCE);
  await tx.ensureSequence('request', 1);
  await tx.ensureSequence('revocation', 0);
}

/**
 * Serial sequence numbers for a controller that shares CA keys with another: a random block
 * of 2^32 numbers above the other's (sequences stay exact in a double: below 2^53).
 */
export function cloneSerialStart(above: number): number {
  const BLOCK = 2 ** 32;
  const start = (Math.floor(Math.max(above, FIRST_LEAF_SEQUENCE) / BLOCK) + 1 + randomInt(2 ** 16)) * BLOCK;
  if (start > 2 ** 52) throw new CairnError('serials_exhausted', 'the serial sequence is too far advanced to give this controller a block of its own');
  return start;
}

/** Move the serial sequence of a store to a block of its own (after a root-CA-only restore). */
export async function moveToOwnBlock(tx: Store, above: number): Promise<void> {
  const seq = await tx.peekSequence('serial');
  await tx.setSequence('serial', cloneSerialStart(Math.max(seq, above)));
}

export const OFFLINE_SERIAL_FILE = 'cluster.serial';

/** Start the offline CA's counter (the root took sequence 0). */
export function startOfflineCounter(dir: string): void {
  writeFilesAtomic([{ path: path.join(dir, OFFLINE_SERIAL_FILE), data: '1\n', mode: FILE_MODE }], { overwrite: true });
}

/**
 * Next sequence number from the offline CA's counter file, under a lock directory so that two
 * concurrent invocations never hand out the same number. The counter is advanced before the
 * number is used: a crash wastes a number, never repeats one.
 */
export function nextOfflineSequence(dir: string): bigint {
  const counter = path.join(dir, OFFLINE_SERIAL_FILE);
  const lock = counter + '.lock';
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      fs.mkdirSync(lock, { mode: 0o700 });
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw new CairnError('io', `cannot lock ${counter}: ${(e as Error).message}`);
      try {
        if (Date.now() - fs.statSync(lock).mtimeMs > 30_000) fs.rmdirSync(lock); // stale lock from a crash
      } catch {
        /* raced with its owner */
      }
      if (Date.now() > deadline) throw new CairnError('locked', `${counter} is locked by another cairn process (remove ${lock} if none is running)`);
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 20);
    }
  }
  try {
    let n = 1n;
    if (exists(counter)) {
      const t = readText(counter).trim();
      if (!/^\d+$/.test(t)) throw new CairnError('corrupt', `${counter} is corrupt: expected a number`);
      n = BigInt(t);
    }
    writeFilesAtomic([{ path: counter, data: `${n + 1n}\n`, mode: FILE_MODE }], { overwrite: true });
    return n;
  } finally {
    fs.rmdirSync(lock);
  }
}
