/**
 * CRL publication. One replica at a time (the holder of the "crl" lease) builds and signs
 * CRLs; every replica serves the newest one from the store. The CRL number is claimed from
 * a store sequence with an atomic update, so it only ever increases, across leaders.
 *
 * The reading, building, signing and storing happen in a worker thread (crl-worker.ts) with
 * its own store connection, so a large CRL does not stall the requests this process serves.
 * A CA whose entries did not change since its last CRL is not re-signed when another CA's
 * revocation moved the mark; it is when its CRL ages (half its validity).
 */
import type { CrlScope } from './keyring.js';
import { LocalKeySigner } from './signer.js';
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import type { Authority } from './authority.js';
import type { CrlJob, CrlJobResult } from './crl-worker.js';
import { publishCrl, type PublishedCrls } from './crl-publish.js';
import { parseCrl, verifyCrl } from '../pki/index.js';

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
  private worker: Worker | null = null;
  private jobs = new Map<number, { resolve(r: CrlJobResult): void; reject(e: Error): void }>();
  private seq = 0;
  /** CRLs this thread signed (keys held elsewhere), as the worker thread remembers its own */
  private published: PublishedCrls = new Map();
  /** per CA: the revocation mark up to which its entries are known to be unchanged */
  private covered: Record<string, number> = {};
  /** per CA: the CRL number and keys last found signed by the scope's key */
  private checkedSigner: Record<string, string> = {};

  constructor(
    private readonly auth: Authority,
    private readonly log: Logger,
    private readonly settings: () => CrlSettings,
  ) {}

  get isLeader(): boolean {
    return this.term !== null;
  }

  /** Start the cycles; resolves when the first one is over (a new cluster then has its first CRLs). */
  start(): Promise<void> {
    let first: () => void;
    const firstDone = new Promise<void>((resolve) => (first = resolve));
    const loop = async () => {
      if (!this.stopped) await this.tick().catch((err) => this.log.warn({ err }, 'CRL cycle failed'));
      first();
      if (!this.stopped) this.timer = setTimeout(loop, this.settings().cycleMs);
    };
    this.timer = setTimeout(loop, 0);
    return firstDone;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    while (this.running) await new Promise((r) => setTimeout(r, 10));
    if (this.term !== null) await this.auth.store.releaseLease(CRL_LEASE, this.auth.replicaId).catch(() => {});
    this.term = null;
    const w = this.worker;
    this.worker = null;
    if (w) {
      const exited = new Promise((r) => w.once('exit', r));
      w.postMessage('close');
      const t = setTimeout(() => void w.terminate(), 5000);
      await exited;
      clearTimeout(t);
    }
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
      // one CRL per generation holding its key (keyring.ts crlScopes), each signed by that key
      for (const scope of this.auth.cas.crlScopes()) {
        const ca = scope.name;
        const last = await store.latestCrl(ca);
        const now = Date.now();
        // a CRL signed by another key than the scope's: a rotation started, completed or was
        // aborted, and the name (`cluster`) moved to another generation — re-signed now, not
        // when it ages
        const aging = !last || now > last.this_update + (last.next_update - last.this_update) / 2 || !this.signedByScope(last, scope);
        if (aging || (last.revocation_mark < mark && (this.covered[ca] ?? -1) < mark)) await this.publish(scope, term, mark, aging);
      }
    } finally {
      this.running = false;
    }
  }

  /** Whether a stored CRL was signed by the key of `scope` (checked once per CRL number and key). */
  private signedByScope(last: { ca_name: string; number: number; der: string }, scope: CrlScope): boolean {
    const k = `${last.number}|${scope.keyIds.join(',')}`;
    if (this.checkedSigner[last.ca_name] === k) return true;
    let ok = false;
    try {
      ok = verifyCrl(parseCrl(Buffer.from(last.der, 'base64')), [scope.signer.info.certDer]) === 0;
    } catch {
      ok = false;
    }
    if (ok) this.checkedSigner[last.ca_name] = k;
    return ok;
  }

  /** Build, sign and store the next CRL of a CA (in the worker thread), fenced by the lease term. */
  async publish(scope: CrlScope, term: number, mark: number, aging = true): Promise<void> {
    const ca = scope.name;
    const family = this.auth.cas.cas.find((c) => c.row.key_id === scope.keyIds[0])?.row.name ?? ca;
    const job = { ca, sequence: `crl-${family}`, keyIds: scope.keyIds, lease: CRL_LEASE, holder: this.auth.replicaId, term, mark, validityMs: this.settings().validityMs, aging, keep: 10 };
    // a key of this process signs in the worker thread; a key held elsewhere (a PKCS#11 token,
    // whose session is this thread's) signs here, through the same steps
    const r =
      scope.signer instanceof LocalKeySigner
        ? await this.run({ ...job, certDer: scope.signer.info.certDer, key: scope.signer.localKey })
        : await publishCrl(this.auth.store, job, scope.signer, this.published);
    if (r.skipped) {
      this.covered[ca] = mark;
      this.log.debug({ ca, entries: r.entries, ms: r.ms }, 'CRL entries unchanged: not re-signed');
      return;
    }
    this.covered[ca] = mark;
    this.log.info({ ca, number: r.number, entries: r.entries, ms: r.ms }, 'published CRL');
  }

  private run(job: Omit<CrlJob, 'id'>): Promise<CrlJobResult> {
    if (!this.worker) {
      const w = new Worker(new URL('./crl-worker.js', import.meta.url), { workerData: { kind: this.auth.store.kind, location: this.auth.store.location } });
      w.unref();
      const failAll = (e: Error) => {
        for (const j of this.jobs.values()) j.reject(e);
        this.jobs.clear();
        if (this.worker === w) this.worker = null;
      };
      w.on('message', (m: CrlJobResult) => {
        const j = this.jobs.get(m.id);
        this.jobs.delete(m.id);
        if (m.error !== undefined) j?.reject(new Error(m.error));
        else j?.resolve(m);
      });
      w.on('error', failAll);
      w.on('exit', () => failAll(new Error('the CRL worker thread exited')));
      this.worker = w;
    }
    const id = ++this.seq;
    return new Promise((resolve, reject) => {
      this.jobs.set(id, { resolve, reject });
      this.worker!.postMessage({ ...job, id });
    });
  }
}
