/**
 * CRL publication. One replica at a time (the holder of the "crl" lease) builds and signs
 * CRLs; every replica serves the newest one from the store. The CRL number is claimed from
 * a store sequence with an atomic update, so it only ever increases, across leaders.
 *
 * The reading, building, signing and storing happen in a worker thread (crl-worker.ts) with
 * its own store connection, so a large CRL does not stall the requests this process serves.
 * The builder keeps each CA's revocation list between publications and reads only what was
 * revoked since (checked against a count of the store's rows; read in full when it does not
 * match, and when the CRL ages). A CA whose entries did not change since its last CRL is not
 * re-signed when another CA's revocation moved the mark; it is when its CRL ages (half its
 * validity).
 *
 * A CA whose key an external CA holds (external-ca.ts) has no key here to sign with: the
 * leader tells that CA each revocation of a certificate it issued (recorded here first, sent
 * again each cycle until it is recorded there), and stores the CRL the external CA gives when
 * it is signed by that CA and lists every revocation it recorded (docs/ca-keys.md).
 */
import type { CrlScope } from './keyring.js';
import { LocalKeySigner, type RevocationForwarder } from './signer.js';
import { normalizeSerialHex, parseCrl, verifyCrl } from '../pki/index.js';
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import type { Authority } from './authority.js';
import type { CrlJob, CrlJobResult } from './crl-worker.js';
import { claimCrlNumber, publishCrl, recordCrl, type CrlPublishJob, type CrlLists } from './crl-publish.js';

/** revocations sent to an external CA per batch */
const FORWARD_BATCH = 100;
/** how often an external CA without a CRL is asked again, and a failure to forward logged again */
const EXTERNAL_RECHECK_MS = 60_000;

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
  /** the revocation lists of the CAs this thread signs for (keys held elsewhere), as the worker thread keeps its own */
  private lists: CrlLists = new Map();
  /** per CA: the revocation mark up to which its entries are known to be unchanged */
  private covered: Record<string, number> = {};
  /** external CAs said to publish no CRL: when they said so (asked again after EXTERNAL_RECHECK_MS; logged once) */
  private noExternalCrl = new Map<string, number>();
  /** when each kind of external CA trouble was last logged (at most once per EXTERNAL_RECHECK_MS) */
  private warned = new Map<string, number>();
  /** per CA: the CRL number and keys last found signed by the scope's key */
  private checkedSigner: Record<string, string> = {};

  /** Log a warning about an external CA unless the same kind was logged within EXTERNAL_RECHECK_MS. */
  private warnExternal(key: string, obj: object, msg: string): void {
    if (Date.now() - (this.warned.get(key) ?? 0) < EXTERNAL_RECHECK_MS) return;
    this.warned.set(key, Date.now());
    this.log.warn(obj, msg);
  }

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
        // an external CA is told first what cairn revoked (its CRL then lists it)
        const forwarded = scope.external ? await this.forward(scope.name, scope.keyIds, scope.external) : 0;
        // its head only: the DER of a large CRL is not read each cycle
        const last = await store.latestCrlHead(ca);
        const now = Date.now();
        // a CRL signed by another key than the scope's: a rotation started, completed or was
        // aborted, and the name (`cluster`) moved to another generation — re-signed now, not
        // when it ages
        const aging = !last || now > last.this_update + (last.next_update - last.this_update) / 2 || (scope.signer !== undefined && !(await this.signedByScope(last, scope.keyIds, scope.signer.info.certDer)));
        if (forwarded > 0 || aging || (last.revocation_mark < mark && (this.covered[ca] ?? -1) < mark)) await this.publish(scope, term, mark, aging, forwarded > 0);
      }
    } finally {
      this.running = false;
    }
  }

  /**
   * Tell an external CA the revocations of certificates it issued that it has not recorded yet
   * (recorded in cairn's store first: a CA down loses nothing, it is told at a later cycle).
   * Returns how many it recorded now; a batch stops after three failures in a row.
   */
  private async forward(ca: string, keyIds: string[], external: RevocationForwarder): Promise<number> {
    const store = this.auth.store;
    let done = 0;
    for (;;) {
      const rows = await store.unforwardedRevocations(keyIds, Date.now(), FORWARD_BATCH);
      const ok: string[] = [];
      const failures: string[] = [];
      for (const r of rows) {
        try {
          await external.revoke(r.serial, r.revocation_reason);
          ok.push(r.serial);
          failures.length = 0;
        } catch (e) {
          failures.push(`${r.serial}: ${(e as Error).message}`);
          if (failures.length >= 3) break;
        }
      }
      await store.markForwarded(ok, Date.now());
      done += ok.length;
      if (ok.length) this.log.info({ ca, revocations: ok.length }, 'revocations recorded by the external CA');
      if (failures.length) {
        this.warnExternal(`${ca}:forward`, { ca, recorded: ok.length, err: failures[failures.length - 1] }, 'the external CA did not record a revocation: it is asked again at the next cycle');
        return done;
      }
      this.warned.delete(`${ca}:forward`);
      if (rows.length < FORWARD_BATCH) return done;
    }
  }

  /**
   * Store the external CA's CRL as this scope's, when it lists every revocation the external CA
   * has recorded for cairn (a CRL missing one is not served: the last one stays). One that said
   * it has no CRL is asked again a minute later, or at once after it was told a revocation (`told`).
   */
  private async publishExternal(scope: { name: string; keyIds: string[]; external: RevocationForwarder }, job: CrlPublishJob, told: boolean): Promise<void> {
    const store = this.auth.store;
    const ca = scope.name;
    const started = performance.now();
    const said = this.noExternalCrl.get(ca);
    if (said !== undefined && !told && Date.now() - said < EXTERNAL_RECHECK_MS) return; // it has none: not asked each second (but after telling it a revocation)
    let der: Buffer | null;
    try {
      der = await scope.external.crl(job.validityMs);
    } catch (e) {
      this.warnExternal(`${ca}:fetch`, { ca, err: (e as Error).message }, "could not fetch the external CA's CRL: the last one stays, asked again at the next cycle");
      return;
    }
    if (!der) {
      const first = !this.noExternalCrl.has(ca);
      this.noExternalCrl.set(ca, Date.now());
      if (first) {
        this.log.warn({ ca }, `the external CA publishes no CRL (GET /api/v1/cfssl/crl answered 404: CFSSL 1.3 or later started with -db-config has one): /v1/crl/${ca} stays unpublished; revocations are recorded there and enforced by cairn`);
      }
      this.covered[ca] = job.mark;
      return;
    }
    this.noExternalCrl.delete(ca);
    this.warned.delete(`${ca}:fetch`);
    const crl = parseCrl(der);
    const now = Date.now();
    const pending = new Set((await store.unforwardedRevocations(scope.keyIds, now, 1_000_000)).map((r) => r.serial));
    const missing = (await store.revokedFor(scope.keyIds, now)).filter((r) => !pending.has(r.serial) && !crl.revoked.has(normalizeSerialHex(r.serial)));
    if (missing.length) {
      this.warnExternal(`${ca}:missing`, { ca, missing: missing.length, first: missing[0].serial }, "the external CA's CRL lacks revocations it recorded: not published (the last CRL stays)");
      return;
    }
    const n = await claimCrlNumber(store, job);
    await recordCrl(store, job, { number: n, der, thisUpdate: crl.thisUpdate.getTime(), nextUpdate: crl.nextUpdate!.getTime(), entries: crl.revoked.size });
    this.covered[ca] = job.mark;
    this.log.info({ ca, number: n, entries: crl.revoked.size, ms: Math.round(performance.now() - started) }, "published the external CA's CRL");
  }

  /**
   * Whether the newest stored CRL was signed by the key of `scope`: known for a CRL this
   * publisher signed, checked once per CRL number and key for one another leader stored (the
   * only time its DER is read here).
   */
  private async signedByScope(last: { ca_name: string; number: number }, keyIds: string[], certDer: Buffer): Promise<boolean> {
    const k = `${last.number}|${keyIds.join(',')}`;
    if (this.checkedSigner[last.ca_name] === k) return true;
    const row = await this.auth.store.latestCrl(last.ca_name);
    if (!row) return false;
    let ok = false;
    try {
      ok = verifyCrl(parseCrl(Buffer.from(row.der, 'base64')), [certDer]) === 0;
    } catch {
      ok = false;
    }
    if (ok) this.checkedSigner[last.ca_name] = `${row.number}|${keyIds.join(',')}`;
    return ok && row.number === last.number;
  }

  /** Build, sign and store the next CRL of a CA (in the worker thread), fenced by the lease term. */
  async publish(scope: CrlScope, term: number, mark: number, aging = true, told = false): Promise<void> {
    const ca = scope.name;
    const family = this.auth.cas.cas.find((c) => c.row.key_id === scope.keyIds[0])?.row.name ?? ca;
    const job = { ca, sequence: `crl-${family}`, keyIds: scope.keyIds, lease: CRL_LEASE, holder: this.auth.replicaId, term, mark, validityMs: this.settings().validityMs, aging, keep: 10 };
    if (scope.external) return this.publishExternal({ ...scope, external: scope.external }, job, told);
    // a key of this process signs in the worker thread; a key held elsewhere (a PKCS#11 token,
    // whose session is this thread's) signs here, through the same steps
    const r =
      scope.signer instanceof LocalKeySigner
        ? await this.run({ ...job, certDer: scope.signer.info.certDer, key: scope.signer.localKey })
        : await publishCrl(this.auth.store, job, scope.signer!, this.lists);
    if (r.skipped) {
      this.covered[ca] = mark;
      this.log.debug({ ca, entries: r.entries, ms: r.ms, read: r.read }, 'CRL entries unchanged: not re-signed');
      return;
    }
    this.covered[ca] = mark;
    // signed with the scope's key just now: not read back and checked at the next cycle
    this.checkedSigner[ca] = `${r.number}|${scope.keyIds.join(',')}`;
    this.log.info({ ca, number: r.number, entries: r.entries, ms: r.ms, read: r.read }, 'published CRL');
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
