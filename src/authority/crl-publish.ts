/**
 * Building, signing and storing one CRL of a CA generation, fenced by the CRL lease term:
 * run by the CRL worker thread (crl-worker.ts) for a key of this process, and by the main
 * thread for a key held elsewhere (a PKCS#11 token: its session belongs to the main thread).
 * The signature is made before the short transaction that records the CRL, never inside it.
 */
import { crlEntryDer, isRevocationReason } from '../pki/index.js';
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

export type CrlPublishResult = { skipped?: boolean; number?: number; entries?: number; ms?: number; read?: 'full' | 'incremental' };

/**
 * How far back (by `revoked_at`) an incremental read looks before the previous read's start:
 * revocations stamped by another replica's clock, or committed a moment after they were
 * stamped. One it still misses is caught by the count that follows (a full read then).
 */
export const CRL_REREAD_MS = 10_000;

/** One CA's revocation list as the builder keeps it between publications. */
interface CrlList {
  /** the CA keys whose certificates it lists (a change reads the list again in full) */
  keyIds: string;
  /** serial → its entry (DER) and the certificate's expiry (the entry leaves the list then) */
  entries: Map<string, { der: Buffer; notAfter: number }>;
  /** the start of the last read, by this builder's clock */
  readAt: number;
  /** the list changed since the last CRL stored from it */
  dirty: boolean;
  /** the number of the last CRL stored from it */
  number?: number;
}

/** Per CA: the revocation list kept between publications (crl-worker.ts, or crl.ts for keys held elsewhere). */
export type CrlLists = Map<string, CrlList>;

type RevokedRow = { serial: string; revoked_at: number | null; revocation_reason: string | null; not_after: number };

function entryOf(r: RevokedRow): { der: Buffer; notAfter: number } {
  const reason = r.revocation_reason && isRevocationReason(r.revocation_reason) ? r.revocation_reason : undefined;
  return { der: crlEntryDer({ serial: Buffer.from(r.serial, 'hex'), revokedAt: new Date(Number(r.revoked_at)), reason }), notAfter: Number(r.not_after) };
}

/**
 * The CA's revocation list, kept up to date: read in full the first time, when its keys
 * change and when the CRL ages; otherwise only the revocations since the last read (by
 * `revoked_at`, CRL_REREAD_MS back), expired entries dropped, and the result checked against
 * a count of the store's rows — a list that does not match is read again in full. The count
 * makes it exact whatever the clocks: every row it counts is revoked and unexpired, as every
 * entry kept is, and rows are never un-revoked.
 */
async function revocationList(store: Store, j: CrlPublishJob, lists: CrlLists, now: number): Promise<{ list: CrlList; read: 'full' | 'incremental' }> {
  const keyIds = j.keyIds.join(',');
  const prev = lists.get(j.ca);
  if (prev && prev.keyIds === keyIds && !j.aging) {
    for (const r of await store.revokedSince(j.keyIds, now, prev.readAt - CRL_REREAD_MS)) {
      if (prev.entries.has(r.serial)) continue; // revoked once: the same entry
      prev.entries.set(r.serial, entryOf(r));
      prev.dirty = true;
    }
    for (const [serial, e] of prev.entries) {
      if (e.notAfter > now) continue;
      prev.entries.delete(serial);
      prev.dirty = true;
    }
    prev.readAt = now;
    if ((await store.countRevoked(j.keyIds, now)) === prev.entries.size) return { list: prev, read: 'incremental' };
  }
  const entries = new Map<string, { der: Buffer; notAfter: number }>();
  for (const r of await store.revokedFor(j.keyIds, now)) entries.set(r.serial, entryOf(r));
  const list: CrlList = { keyIds, entries, readAt: now, dirty: true, number: prev?.keyIds === keyIds ? prev.number : undefined };
  // the same entries as the CRL stored from the previous list: not a change
  if (prev && prev.keyIds === keyIds && !prev.dirty && sameEntries(prev.entries, entries)) list.dirty = false;
  lists.set(j.ca, list);
  return { list, read: 'full' };
}

function sameEntries(a: Map<string, { der: Buffer }>, b: Map<string, { der: Buffer }>): boolean {
  if (a.size !== b.size) return false;
  for (const [serial, e] of a) if (!b.get(serial)?.der.equals(e.der)) return false;
  return true;
}

export async function publishCrl(store: Store, j: CrlPublishJob, signer: CaSigner, lists: CrlLists): Promise<CrlPublishResult> {
  const started = performance.now();
  const now = Date.now();
  const { list, read } = await revocationList(store, j, lists, now);
  if (!j.aging && !list.dirty && list.number !== undefined && (await store.latestCrlNumber(j.ca)) === list.number) {
    return { skipped: true, entries: list.entries.size, ms: Math.round(performance.now() - started), read };
  }
  const entriesDer = [...list.entries.values()].map((e) => e.der);
  // the number is claimed, the CRL signed, then recorded in a short transaction fenced by the
  // lease term (a number claimed by a leader that lost its lease is skipped, never reused)
  const n = await claimCrlNumber(store, j);
  const der = await signCrl(signer, { number: BigInt(n), thisUpdate: new Date(now - 60_000), nextUpdate: new Date(now + j.validityMs), revoked: [], entriesDer });
  const number = await recordCrl(store, j, { number: n, der, thisUpdate: now - 60_000, nextUpdate: now + j.validityMs, entries: entriesDer.length });
  list.dirty = false;
  list.number = number;
  return { number, entries: entriesDer.length, ms: Math.round(performance.now() - started), read };
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
