/**
 * Building, signing and storing one CRL of a CA generation, fenced by the CRL lease term:
 * run by the CRL worker thread (crl-worker.ts) for a key of this process, and by the main
 * thread for a key held elsewhere (a PKCS#11 token: its session belongs to the main thread).
 * The signature is made before the short transaction that records the CRL, never inside it.
 */
import { createHash } from 'node:crypto';
import { isRevocationReason, RevokedEntry } from '../pki/index.js';
import type { Store } from '../store/store.js';
import { CaSigner, signCrl } from './signer.js';

export interface CrlPublishJob {
  /** where the CRL is stored and served: `cluster`, `client`, or a retired generation's row ID */
  ca: string;
  /** the sequence its number comes from: one per CA, shared by its generations (numbers only grow) */
  sequence: string;
  keyIds: string[];
  lease: string;
  holder: string;
  term: number;
  mark: number;
  validityMs: number;
  /** publish even when the entries did not change (the CRL ages) */
  aging: boolean;
  keep: number;
}

export type CrlPublishResult = { skipped?: boolean; number?: number; entries?: number; ms?: number };

/** Per CA: a digest of the entries of the last CRL stored, and its number. */
export type PublishedCrls = Map<string, { digest: string; number: number }>;

export async function publishCrl(store: Store, j: CrlPublishJob, signer: CaSigner, published: PublishedCrls): Promise<CrlPublishResult> {
  const started = performance.now();
  const now = Date.now();
  const rows = await store.revokedFor(j.keyIds, now);
  const h = createHash('sha256');
  for (const r of rows) h.update(`${r.serial},${r.revoked_at},${r.revocation_reason ?? ''};`);
  const digest = h.digest('hex');
  const prev = published.get(j.ca);
  if (!j.aging && prev && prev.digest === digest && (await store.latestCrlNumber(j.ca)) === prev.number) {
    return { skipped: true, entries: rows.length, ms: Math.round(performance.now() - started) };
  }
  const revoked: RevokedEntry[] = rows.map((r) => ({
    serial: Buffer.from(r.serial, 'hex'),
    revokedAt: new Date(Number(r.revoked_at)),
    reason: r.revocation_reason && isRevocationReason(r.revocation_reason) ? r.revocation_reason : undefined,
  }));
  // the number is claimed, the CRL signed, then recorded in a short transaction fenced by the
  // lease term (a number claimed by a leader that lost its lease is skipped, never reused)
  const n = await claimCrlNumber(store, j);
  const der = await signCrl(signer, { number: BigInt(n), thisUpdate: new Date(now - 60_000), nextUpdate: new Date(now + j.validityMs), revoked });
  const number = await recordCrl(store, j, { number: n, der, thisUpdate: now - 60_000, nextUpdate: now + j.validityMs, entries: revoked.length });
  published.set(j.ca, { digest, number });
  return { number, entries: revoked.length, ms: Math.round(performance.now() - started) };
}

/** The next number of a CA's CRLs, claimed while holding the lease. */
export async function claimCrlNumber(store: Store, j: Pick<CrlPublishJob, 'lease' | 'holder' | 'term' | 'sequence'>): Promise<number> {
  if (!(await store.holdsLease(j.lease, j.holder, j.term))) throw new Error('lost the CRL lease before publishing');
  await store.ensureSequence(j.sequence, 1);
  return (await store.claimRange(j.sequence, 1)).start;
}

/** Record a CRL (signed here, or an external CA's) in a short transaction fenced by the lease term; older ones pruned. */
export async function recordCrl(
  store: Store,
  j: Pick<CrlPublishJob, 'ca' | 'lease' | 'holder' | 'term' | 'mark' | 'keep'>,
  c: { number: number; der: Buffer; thisUpdate: number; nextUpdate: number; entries: number },
): Promise<number> {
  return store.transaction(async (tx) => {
    if (!(await tx.holdsLease(j.lease, j.holder, j.term))) throw new Error('lost the CRL lease before publishing');
    await tx.insertCrl({ ca_name: j.ca, number: c.number, der: c.der.toString('base64'), this_update: c.thisUpdate, next_update: c.nextUpdate, revocation_mark: j.mark, entries: c.entries, replica_id: j.holder, term: j.term });
    await tx.pruneCrls(j.ca, j.keep);
    return c.number;
  });
}
