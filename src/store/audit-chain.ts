/**
 * The audit log's hash chain: each entry holds the hash of the one before it (one chain in
 * the store, across replicas), so an entry changed, deleted or inserted breaks the chain at
 * that point. How an entry is hashed is defined here, once: the store appends with it and
 * `cairn audit verify` (authority/audit-log.ts) checks with it.
 */
import { createHash } from 'node:crypto';
import { sql, type Kysely } from 'kysely';

/** The hash the first entry chains to. */
export const GENESIS_HASH = '0'.repeat(64);

/** What an entry's hash covers: every field of the row but the hash itself. */
export interface ChainedEntry {
  seq: number;
  id: string;
  at: number;
  replica_id: string;
  actor: string;
  action: string;
  subject: string;
  outcome: string;
  detail: string;
}

/** SHA-256 (hex) over the previous entry's hash and this entry's fields, in a fixed JSON array. */
export function auditEntryHash(prevHash: string, e: ChainedEntry): string {
  const fields = ['cairn-audit-1', prevHash, Number(e.seq), e.id, Number(e.at), e.replica_id, e.actor, e.action, e.subject, e.outcome, e.detail];
  return createHash('sha256').update(JSON.stringify(fields)).digest('hex');
}

/**
 * Chain the entries recorded before the chain existed (seq null; a store migrated from an older
 * cairn, or a restored backup of one), oldest first, after the last chained one, and set the
 * head. Runs inside the caller's transaction.
 */
export async function chainUnchained(db: Kysely<any>): Promise<{ seq: number; hash: string }> {
  const last = await db.selectFrom('audit').select(['seq', 'hash']).where('seq', 'is not', null).orderBy('seq', 'desc').limit(1).executeTakeFirst();
  let seq = last ? Number(last.seq) : 0;
  let prev: string = last ? String(last.hash) : GENESIS_HASH;
  const rows = await db.selectFrom('audit').selectAll().where('seq', 'is', null).orderBy('at').orderBy('id').execute();
  for (const r of rows) {
    seq++;
    const e: ChainedEntry = {
      seq, id: r.id, at: Number(r.at), replica_id: r.replica_id ?? '', actor: r.actor, action: r.action, subject: r.subject ?? '', outcome: r.outcome ?? 'success', detail: r.detail,
    };
    const h = auditEntryHash(prev, e);
    await db.updateTable('audit').set({ seq, replica_id: e.replica_id, subject: e.subject, outcome: e.outcome, prev_hash: prev, hash: h }).where('id', '=', r.id).execute();
    prev = h;
  }
  await sql`delete from audit_head`.execute(db);
  await db.insertInto('audit_head').values({ id: 'chain', seq, hash: prev }).execute();
  return { seq, hash: prev };
}
