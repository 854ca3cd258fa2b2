/**
 * CRL publication. One replica at a time (the holder of the "crl" lease) builds and signs
 * CRLs; every replica serves the newest one from the store. The CRL number is claimed from
 * a store sequence with an atomic update, so it only ever increases, across leaders.
 */
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { buildCrl, isRevocationReason, RevokedEntry } from '../pki/index.js';
import type { Authority } from './authority.js';

export const CRL_LEASE = 'crl';

export interface CrlSettings {
  /** how long a lease lasts without renewal */
  leaseMs: number;
  /** how often the leader checks for revocations (bursts within one cycle are coalesced) */
  cycleMs: number;
  /** CRL validity (nextUpdate - thisUpdate); regenerated when half of it has passed */
  validityMs: number;
}

export class CrlPublisher {
  private timer: NodeJS.Timeout | null = null;
  private running = false;
  private term: number | null = null;
  private stopped = false;

  constructor(
    private readonly auth: Authority,
    private readonly log: Logger,
    private readonly settings: () => CrlSettings,
  ) {}

  get isLeader(): boolean {
    return this.term !== null;
  }

  start(): void {
    const loop = async () => {
      if (this.stopped) return;
      await this.tick().catch((err) => this.log.warn({ err }, 'CRL cycle failed'));
      if (!this.stopped) this.timer = setTimeout(loop, this.settings().cycleMs);
    };
    this.timer = setTimeout(loop, 0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    while (this.running) await new Promise((r) => setTimeout(r, 10));
    if (this.term !== null) await this.auth.store.releaseLease(CRL_LEASE, this.auth.replicaId).catch(() => {});
    this.term = null;
  }

  /** One cycle: hold the lease, and publish when a revocation is pending or the CRL ages. */
  async tick(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      const s = this.settings();
      const store = this.auth.store;
      const term = await store.acquireLease(CRL_LEASE, this.auth.replicaId, s.leaseMs);
      if (term === null) {
        if (this.term !== null) this.log.info('lost the CRL lease');
        this.term = null;
        return;
      }
      if (this.term !== term) this.log.info({ term }, 'holding the CRL lease: this replica publishes CRLs');
      this.term = term;
      const mark = await store.peekSequence('revocation');
      for (const ca of ['cluster', 'client'] as const) {
        const last = await store.latestCrl(ca);
        const now = Date.now();
        const aging = !last || now > last.this_update + (last.next_update - last.this_update) / 2;
        if (aging || last.revocation_mark < mark) await this.publish(ca, term, mark);
      }
    } finally {
      this.running = false;
    }
  }

  /** Build, sign and store the next CRL of a CA, fenced by the lease term. */
  async publish(ca: 'cluster' | 'client', term: number, mark: number): Promise<void> {
    const store = this.auth.store;
    const issuer = this.auth.crlIssuer(ca);
    const started = performance.now();
    const now = Date.now();
    const rows = await store.revokedFor(this.auth.caKeyIds(ca), now);
    const revoked: RevokedEntry[] = rows.map((r) => ({
      serial: Buffer.from(r.serial, 'hex'),
      revokedAt: new Date(Number(r.revoked_at)),
      reason: r.revocation_reason && isRevocationReason(r.revocation_reason) ? r.revocation_reason : undefined,
    }));
    const validity = this.settings().validityMs;
    await store.transaction(async (trx) => {
      if (!(await store.holdsLease(CRL_LEASE, this.auth.replicaId, term, trx))) throw new Error('lost the CRL lease before publishing');
      await store.ensureSequence(`crl-${ca}`, 1, trx);
      const { start: number } = await store.claimRange(`crl-${ca}`, 1, trx);
      const der = buildCrl({ issuer, number: BigInt(number), thisUpdate: new Date(now - 60_000), nextUpdate: new Date(now + validity), revoked });
      await store.insertCrl(
        { ca_name: ca, number, der: der.toString('base64'), this_update: now - 60_000, next_update: now + validity, revocation_mark: mark, entries: revoked.length, replica_id: this.auth.replicaId, term },
        trx,
      );
      await store.pruneCrls(ca, 10, trx);
      this.log.info({ ca, number, entries: revoked.length, ms: Math.round(performance.now() - started) }, 'published CRL');
    });
  }
}
