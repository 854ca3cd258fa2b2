/**
 * The CRL builder's thread (worker_threads): it reads a CA's revoked certificates, builds and
 * signs the CRL and stores it, fenced by the lease term, on its own store connection. A CRL
 * with 100,000 entries takes a good part of a second to read and build: here it does not
 * stall the requests of the main thread.
 *
 * It remembers, per CA, a digest of the entries of the last CRL it stored: when the entries
 * are the same and that CRL is still the newest, there is nothing to re-sign (the main thread
 * asks again when the CRL ages).
 */
import { createHash, KeyObject } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';
import { buildCrl, isRevocationReason, makeIssuer, RevokedEntry } from '../pki/index.js';
import { openStore } from '../store/store.js';

export interface CrlJob {
  id: number;
  /** where the CRL is stored and served: `cluster`, `client`, or a retired generation's row ID */
  ca: string;
  /** the sequence its number comes from: one per CA, shared by its generations (numbers only grow) */
  sequence: string;
  keyIds: string[];
  certDer: Uint8Array;
  key: KeyObject;
  lease: string;
  holder: string;
  term: number;
  mark: number;
  validityMs: number;
  /** publish even when the entries did not change (the CRL ages) */
  aging: boolean;
  keep: number;
}

export type CrlJobResult = { id: number; error?: string; skipped?: boolean; number?: number; entries?: number; ms?: number };

const { kind, location } = workerData as { kind: 'sqlite' | 'postgres'; location: string };
const store = await openStore(kind, location, { migrate: false, poolSize: 1 });
const published = new Map<string, { digest: string; number: number }>();

async function publish(j: CrlJob): Promise<Omit<CrlJobResult, 'id'>> {
  const started = performance.now();
  const now = Date.now();
  const rows = await store.revokedFor(j.keyIds, now);
  const h = createHash('sha256');
  for (const r of rows) h.update(`${r.serial},${r.revoked_at},${r.revocation_reason ?? ''};`);
  const digest = h.digest('hex');
  const prev = published.get(j.ca);
  if (!j.aging && prev && prev.digest === digest && (await store.latestCrl(j.ca))?.number === prev.number) {
    return { skipped: true, entries: rows.length, ms: Math.round(performance.now() - started) };
  }
  const revoked: RevokedEntry[] = rows.map((r) => ({
    serial: Buffer.from(r.serial, 'hex'),
    revokedAt: new Date(Number(r.revoked_at)),
    reason: r.revocation_reason && isRevocationReason(r.revocation_reason) ? r.revocation_reason : undefined,
  }));
  const issuer = makeIssuer(Buffer.from(j.certDer), j.key);
  // the number is claimed, the CRL signed, then recorded in a short transaction fenced by the
  // lease term (a number claimed by a leader that lost its lease is skipped, never reused)
  if (!(await store.holdsLease(j.lease, j.holder, j.term))) throw new Error('lost the CRL lease before publishing');
  await store.ensureSequence(j.sequence, 1);
  const { start: n } = await store.claimRange(j.sequence, 1);
  const der = buildCrl({ issuer, number: BigInt(n), thisUpdate: new Date(now - 60_000), nextUpdate: new Date(now + j.validityMs), revoked });
  const number = await store.transaction(async (tx) => {
    if (!(await tx.holdsLease(j.lease, j.holder, j.term))) throw new Error('lost the CRL lease before publishing');
    await tx.insertCrl({ ca_name: j.ca, number: n, der: der.toString('base64'), this_update: now - 60_000, next_update: now + j.validityMs, revocation_mark: j.mark, entries: revoked.length, replica_id: j.holder, term: j.term });
    await tx.pruneCrls(j.ca, j.keep);
    return n;
  });
  published.set(j.ca, { digest, number });
  return { number, entries: revoked.length, ms: Math.round(performance.now() - started) };
}

parentPort!.on('message', (m: CrlJob | 'close') => {
  if (m === 'close') {
    store.close().finally(() => parentPort!.close());
    return;
  }
  publish(m).then(
    (r) => parentPort!.postMessage({ id: m.id, ...r }),
    (e: Error) => parentPort!.postMessage({ id: m.id, error: e?.message ?? String(e) }),
  );
});
