/**
 * The signed, tamper-evident audit log.
 *
 * Every state change is an entry in one hash chain in the store (store/audit-chain.ts): each
 * entry holds the hash of the one before, across replicas, appended in the same transaction
 * as the change. Periodically the replica holding the `audit-seal` lease seals the chain: it
 * signs the newest entry's position and hash with the audit signing certificate
 * (signing-keys.ts; Dogtag's auditSigningCert, issued by cluster-root-ca).
 *
 * `cairn audit verify` walks the chain and the seals (ChainVerifier) and names the first entry
 * that was changed, deleted or inserted. What it can and cannot catch: any change to an entry
 * breaks its hash or the link of the next one; rewriting the chain consistently from an entry
 * onwards (recomputing every later hash) is caught by the first seal after it; entries after
 * the newest seal are only as safe as the store until the next seal (at most one
 * `auditSealIntervalMs`).
 */
import { verify as nodeVerify, X509Certificate } from 'node:crypto';
import type { Logger } from 'pino';
import { certificateFromPem, certificateInfo, PkiError, signatureSchemeFor, signWith, verifyChain } from '../pki/index.js';
import { auditEntryHash, GENESIS_HASH, type AuditSealTable, type AuditTable } from '../store/store.js';
import type { Authority } from './authority.js';
import { AUDIT_SIGNER_OU } from './policy.js';

export const AUDIT_SEAL_LEASE = 'audit-seal';

/** What a seal signs. */
export function auditSealMessage(clusterId: string, seq: number, hash: string, at: number): Buffer {
  return Buffer.from(`cairn-audit-seal-1\ncluster=${clusterId}\nseq=${seq}\nhash=${hash}\nat=${at}\n`);
}

/**
 * The leader task: under the `audit-seal` lease, seal the chain's head when it moved since the
 * last seal, and keep the subsystem certificates (OCSP and audit signing) issued and fresh.
 */
export class AuditSealer {
  private timer: NodeJS.Timeout | null = null;
  private stopped = false;
  private running: Promise<void> | null = null;
  private lastEnsure = 0;

  constructor(
    private readonly auth: Authority,
    private readonly log: Logger,
  ) {}

  start(): void {
    const loop = async () => {
      if (this.stopped) return;
      this.running = this.tick().then(
        () => undefined,
        (err) => this.log.warn({ err }, 'audit seal cycle failed'),
      );
      await this.running;
      this.running = null;
      if (!this.stopped) {
        this.timer = setTimeout(loop, Math.min(this.auth.config.auditSealIntervalMs, 60_000));
        this.timer.unref();
      }
    };
    this.timer = setTimeout(loop, 0);
    this.timer.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.running;
    await this.auth.store.releaseLease(AUDIT_SEAL_LEASE, this.auth.replicaId).catch(() => {});
  }

  /** One cycle; returns the seal made, if any. */
  async tick(): Promise<AuditSealTable | null> {
    const store = this.auth.store;
    const interval = this.auth.config.auditSealIntervalMs;
    const term = await store.acquireLease(AUDIT_SEAL_LEASE, this.auth.replicaId, Math.max(15_000, interval * 3));
    if (term === null) return null;
    if (Date.now() - this.lastEnsure > 3600_000) {
      const issued = await this.auth.signingKeys.ensure();
      for (const k of issued) this.log.info({ purpose: k.purpose, serial: k.serial }, 'issued a signing certificate');
      this.lastEnsure = Date.now();
    }
    const last = await store.latestAuditSeal();
    if (last && Date.now() - Number(last.at) < interval) return null;
    return sealAuditLog(this.auth);
  }
}

/** Seal the chain's head now (when it moved since the last seal). */
export async function sealAuditLog(auth: Authority): Promise<AuditSealTable | null> {
  const store = auth.store;
  const head = await store.auditHead();
  const last = await store.latestAuditSeal();
  if (!head || head.seq === 0 || (last && Number(last.seq) >= Number(head.seq))) return null;
  const signer = await auth.signingKeys.current('audit', auth.signingCa('cluster').keyId);
  if (!signer) return null;
  const at = Date.now();
  const seq = Number(head.seq);
  const sig = signWith(signer.key, signatureSchemeFor(signer.key), auditSealMessage(auth.clusterId, seq, head.hash, at));
  const seal: AuditSealTable = {
    id: `${at.toString(36)}-${seq}`,
    seq,
    hash: head.hash,
    at,
    replica_id: auth.replicaId,
    signer_pem: signer.row.cert_pem,
    signature: sig.toString('base64'),
  };
  await store.insertAuditSeal(seal);
  return seal;
}

// ---------------------------------------------------------------- verification

/** A chained entry as the API hands it to `cairn audit verify`. */
export type ChainRow = Pick<AuditTable, 'id' | 'at' | 'actor' | 'action' | 'detail' | 'replica_id' | 'subject' | 'outcome' | 'prev_hash' | 'hash'> & { seq: number };

export type SealRow = Pick<AuditSealTable, 'seq' | 'hash' | 'at' | 'replica_id' | 'signer_pem' | 'signature'>;

export interface AuditProblem {
  /** the position of the entry named */
  seq: number | null;
  kind: 'changed' | 'deleted' | 'inserted' | 'seal';
  message: string;
}

export interface AuditVerifyResult {
  ok: boolean;
  entries: number;
  seals: number;
  /** position of the newest entry a valid seal covers */
  sealedThrough: number;
  /** entries after the newest seal (not yet signed) */
  unsealed: number;
  /** in order of position; the first is the first entry changed, deleted or inserted */
  problems: AuditProblem[];
}

const hashOf = (r: ChainRow, seq = r.seq) =>
  auditEntryHash(r.prev_hash ?? '', {
    seq, id: r.id, at: Number(r.at), replica_id: r.replica_id ?? '', actor: r.actor, action: r.action, subject: r.subject ?? '', outcome: r.outcome ?? '', detail: r.detail,
  });

const MAX_PROBLEMS = 20;
const when = (ms: number) => new Date(Number(ms)).toISOString();

/**
 * Walks the chain in order of position (`add` each entry, then `finish`). Seals are checked
 * first: each must be signed by an audit signing certificate of this cluster that chains to
 * one of `roots` (the cluster roots the verifier trusts), within its validity.
 */
export class ChainVerifier {
  private problems: AuditProblem[] = [];
  private prev: { seq: number; hash: string } = { seq: 0, hash: GENESIS_HASH };
  private pending: ChainRow | null = null;
  private count = 0;
  /** how far positions moved (an entry inserted or deleted with every later one renumbered) */
  private shift = 0;
  private readonly seals = new Map<number, SealRow[]>();
  private validSeals = 0;
  private sealedThrough = 0;
  private readonly signers = new Map<string, string | null>();

  constructor(
    private readonly clusterId: string,
    private readonly roots: Buffer[],
    seals: SealRow[],
  ) {
    for (const s of seals) {
      const why = this.sealProblem(s);
      if (why) {
        this.problem(Number(s.seq), 'seal', `the seal of ${when(s.at)} over entry ${s.seq} ${why}`);
        continue;
      }
      this.validSeals++;
      const l = this.seals.get(Number(s.seq)) ?? [];
      l.push(s);
      this.seals.set(Number(s.seq), l);
    }
  }

  private problem(seq: number | null, kind: AuditProblem['kind'], message: string) {
    if (this.problems.length < MAX_PROBLEMS) this.problems.push({ seq, kind, message });
  }

  /** Why a seal cannot be trusted, or null. */
  private sealProblem(s: SealRow): string | null {
    let signer = this.signers.get(s.signer_pem);
    if (signer === undefined) {
      signer = null;
      try {
        const der = certificateFromPem(s.signer_pem, 'the seal signer');
        const info = certificateInfo(der);
        verifyChain(der, [], this.roots, { purpose: 'any', at: new Date(Number(s.at)) });
        if (info.subjectAttrs.OU !== AUDIT_SIGNER_OU || info.subjectAttrs.O !== this.clusterId) signer = 'is signed by a certificate that is not this cluster\'s audit signing certificate';
      } catch (e) {
        if (!(e instanceof PkiError)) throw e;
        signer = `is signed by a certificate that does not chain to a trusted cluster root (${e.message})`;
      }
      this.signers.set(s.signer_pem, signer);
    }
    if (signer) return signer;
    const x = new X509Certificate(s.signer_pem);
    const at = Number(s.at);
    if (at < Date.parse(x.validFrom) || at > Date.parse(x.validTo)) return 'was made outside its signer\'s validity';
    const msg = auditSealMessage(this.clusterId, Number(s.seq), s.hash, at);
    const hashName = x.publicKey.asymmetricKeyType === 'ed25519' ? null : x.publicKey.asymmetricKeyDetails?.namedCurve === 'secp384r1' ? 'sha384' : 'sha256';
    if (!nodeVerify(hashName, msg, x.publicKey, Buffer.from(s.signature, 'base64'))) return 'has an invalid signature';
    return null;
  }

  /** The next entry, in order of position. */
  add(row: ChainRow): void {
    if (this.pending) this.check(this.pending, row);
    this.pending = row;
    this.count++;
  }

  /** Check `r` against the entry before it and (when there is one) the entry after it. */
  private check(r: ChainRow, next: ChainRow | null): void {
    const seq = Number(r.seq);
    const p = this.prev;
    const expected = p.seq + 1;
    let reported = false;
    if (seq > expected) {
      this.problem(expected, 'deleted', seq === expected + 1 ? `entry ${expected} was deleted` : `entries ${expected} to ${seq - 1} were deleted`);
      reported = true;
    }
    if (hashOf(r, seq - this.shift) !== r.hash) {
      if (hashOf(r, seq - this.shift - 1) === r.hash) {
        this.problem(seq - 1, 'inserted', `an entry was inserted at position ${seq - 1} (the entries after it were renumbered)`);
        this.shift += 1;
      } else if (hashOf(r, seq - this.shift + 1) === r.hash) {
        this.problem(seq, 'deleted', `entry ${seq} was deleted (the entries after it were renumbered)`);
        this.shift -= 1;
      } else {
        this.problem(seq, 'changed', `entry ${seq} (${r.action}, ${when(r.at)}) was changed`);
      }
      reported = true;
    } else if (r.prev_hash !== p.hash && !reported) {
      if (next && next.prev_hash === p.hash) this.problem(seq, 'inserted', `entry ${seq} (${r.action}, ${when(r.at)}) was inserted: the entry after it chains to the one before it`);
      else this.problem(p.seq, 'changed', `entry ${p.seq} was changed (its hash was recomputed, so entry ${seq} no longer chains to it)`);
    }
    for (const s of this.seals.get(seq) ?? []) {
      if (s.hash !== r.hash) {
        const from = this.sealedThrough + 1;
        this.problem(seq, 'seal', `entries ${from} to ${seq} differ from what the seal of ${when(s.at)} signed: one of them was changed, deleted or inserted`);
      } else this.sealedThrough = Math.max(this.sealedThrough, seq);
    }
    this.prev = { seq, hash: r.hash ?? '' };
  }

  /** After the last entry: compare with the head row and the seals beyond the entries, and sum up. */
  finish(head: { seq: number; hash: string } | null, unchained: { count: number; ids?: string[] }): AuditVerifyResult {
    if (this.pending) this.check(this.pending, null);
    this.pending = null;
    const last = this.prev;
    if (head && Number(head.seq) > last.seq) {
      this.problem(last.seq + 1, 'deleted', Number(head.seq) === last.seq + 1 ? `entry ${last.seq + 1}, the newest, was deleted` : `entries ${last.seq + 1} to ${head.seq}, the newest, were deleted`);
    } else if (head && Number(head.seq) < last.seq) {
      this.problem(Number(head.seq) + 1, 'inserted', `entries after ${head.seq}, the newest the chain recorded, were inserted`);
    } else if (head && head.hash !== last.hash && last.seq > 0) {
      this.problem(last.seq, 'changed', `entry ${last.seq}, the newest, was changed`);
    }
    for (const [seq, seals] of this.seals) {
      if (seq > last.seq) this.problem(last.seq + 1, 'deleted', `entries up to ${seq} were sealed on ${when(seals[0].at)} but are missing`);
    }
    if (unchained.count > 0) {
      const ids = unchained.ids?.length ? `: ${unchained.ids.slice(0, 5).join(', ')}` : '';
      this.problem(null, 'inserted', `${unchained.count} entr${unchained.count === 1 ? 'y is' : 'ies are'} outside the chain (inserted)${ids}`);
    }
    const problems = [...this.problems].sort((a, b) => (a.seq ?? Infinity) - (b.seq ?? Infinity));
    return {
      ok: problems.length === 0,
      entries: this.count,
      seals: this.validSeals,
      sealedThrough: this.sealedThrough,
      unsealed: Math.max(0, last.seq - this.sealedThrough),
      problems,
    };
  }
}
