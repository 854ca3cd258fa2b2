import { randomBytes } from 'node:crypto';
import path from 'node:path';
import SqliteDatabase from 'better-sqlite3';
import { Kysely, Migrator, PostgresDialect, SqliteDialect, Transaction } from 'kysely';
import pg from 'pg';
import { CairnError } from '../util/errors.js';
import { migrationProvider } from './migrations.js';
import { GuardedDialect, StoreUnavailableError } from './unavailable.js';

export { StoreUnavailableError } from './unavailable.js';
import type { CaTable, CertificateTable, CrlTable, Database, NodeTable } from './schema.js';

export type Db = Kysely<Database> | Transaction<Database>;

/** Where a page of a listing starts: after the row with this (created_at, key). */
export interface PageKey {
  t: number;
  k: string;
}

export type NodeWithCertificate = Pick<NodeTable, 'id' | 'role' | 'status' | 'created_at' | 'updated_at' | 'current_serial'> & {
  cert_serial: string | null;
  cert_not_before: number | null;
  cert_not_after: number | null;
  cert_issuer_key_id: string | null;
};
export type StoreKind = 'sqlite' | 'postgres';

// PostgreSQL returns BIGINT as strings; every bigint cairn stores fits in a double (ms times, counters).
pg.types.setTypeParser(20, (v: string) => Number(v));

export const SQLITE_FILE = 'cairn.db';

/** Where the store lives: `postgres://…` URLs, or a SQLite file (default: <state dir>/cairn.db). */
export function resolveStoreUrl(url: string | undefined, stateDir: string): { kind: StoreKind; location: string } {
  if (!url) return { kind: 'sqlite', location: path.join(stateDir, SQLITE_FILE) };
  if (/^postgres(ql)?:\/\//.test(url)) return { kind: 'postgres', location: url };
  if (url.startsWith('sqlite:')) return { kind: 'sqlite', location: url.slice('sqlite:'.length) };
  throw new CairnError('bad_store', `unsupported store "${redactUrl(url)}": use postgres://… or sqlite:<file>`, 2);
}

/** A URL with any password replaced, safe to log. */
export function redactUrl(url: string): string {
  return url.replace(/(\/\/[^:/@]+:)[^@]*@/, '$1***@');
}

export class Store {
  readonly db: Kysely<Database>;
  readonly kind: StoreKind;
  /** the SQLite file or PostgreSQL URL it was opened with (another thread may open its own) */
  readonly location: string;

  private constructor(db: Kysely<Database>, kind: StoreKind, location: string) {
    this.db = db;
    this.kind = kind;
    this.location = location;
  }

  /** Open (and migrate) the store. Migration is safe to run from several replicas at once. */
  static async open(kind: StoreKind, location: string, opts: { migrate?: boolean; poolSize?: number } = {}): Promise<Store> {
    let db: Kysely<Database>;
    if (kind === 'sqlite') {
      let sqlite: SqliteDatabase.Database;
      try {
        sqlite = new SqliteDatabase(location, { fileMustExist: opts.migrate === false });
        sqlite.pragma('journal_mode = WAL');
        // WAL + NORMAL: a committed transaction survives a crash of the process (not of the OS)
        sqlite.pragma('synchronous = NORMAL');
        sqlite.pragma('busy_timeout = 5000');
        sqlite.pragma('foreign_keys = ON');
      } catch (e) {
        throw new StoreUnavailableError(`cannot open SQLite store ${location}: ${(e as Error).message}`);
      }
      // kysely prepares every query anew; cache prepared statements by SQL text (bounded)
      const statements = new Map<string, SqliteDatabase.Statement>();
      const cached = {
        prepare(sql: string) {
          let st = statements.get(sql);
          if (!st) {
            st = sqlite.prepare(sql);
            if (statements.size > 500) statements.clear();
            statements.set(sql, st);
          }
          return st;
        },
        close() {
          statements.clear();
          sqlite.close();
        },
      };
      // several processes may share the file (serve --workers, a CLI command beside a server):
      // WAL, a busy timeout, and transactions that take the write lock as they begin (every
      // transaction of cairn writes), so none fails another with SQLITE_BUSY
      db = new Kysely<Database>({ dialect: new GuardedDialect(new SqliteDialect({ database: cached as unknown as SqliteDatabase.Database }), 'begin immediate') });
    } else {
      const pool = new pg.Pool({ connectionString: location, max: opts.poolSize ?? 10, connectionTimeoutMillis: 5000 });
      pool.on('error', () => {
        /* idle client errors (server restart) are surfaced on the next query */
      });
      // a checked-out client between two queries (inside a transaction) has no error listener
      // of the pool's: a backend killed then would be an unhandled 'error' event, ending the
      // process. The failure surfaces on the client's next query instead (store_unavailable).
      pool.on('connect', (client) => {
        client.on('error', () => {});
      });
      db = new Kysely<Database>({ dialect: new GuardedDialect(new PostgresDialect({ pool })) });
    }
    const store = new Store(db, kind, location);
    if (opts.migrate !== false) await store.migrate(location);
    return store;
  }

  async migrate(location = ''): Promise<void> {
    const migrator = new Migrator({ db: this.db, provider: migrationProvider });
    let res;
    try {
      res = await migrator.migrateToLatest();
    } catch (e) {
      throw new StoreUnavailableError(`cannot migrate store ${redactUrl(location)}: ${(e as Error).message}`, { cause: e });
    }
    if (res.error) {
      throw new StoreUnavailableError(`cannot migrate store ${redactUrl(location)}: ${(res.error as Error).message ?? res.error}`, { cause: res.error });
    }
  }

  async close(): Promise<void> {
    await this.db.destroy();
  }

  /** Run `fn` in one transaction: all of it is recorded, or none. */
  transaction<T>(fn: (trx: Transaction<Database>) => Promise<T>): Promise<T> {
    return this.db.transaction().execute(fn);
  }

  async ping(): Promise<void> {
    await this.db.selectFrom('sequences').select('name').limit(1).execute();
  }

  // ---- cluster and configuration

  async getCluster(db: Db = this.db) {
    return db.selectFrom('cluster').selectAll().executeTakeFirst();
  }

  async getConfig(db: Db = this.db): Promise<Record<string, unknown>> {
    const rows = await db.selectFrom('config').selectAll().execute();
    return Object.fromEntries(rows.map((r) => [r.key, JSON.parse(r.value)]));
  }

  async setConfig(values: Record<string, unknown>, db: Db = this.db): Promise<void> {
    const now = Date.now();
    for (const [key, v] of Object.entries(values)) {
      await db
        .insertInto('config')
        .values({ key, value: JSON.stringify(v), updated_at: now })
        .onConflict((oc) => oc.column('key').doUpdateSet({ value: JSON.stringify(v), updated_at: now }))
        .execute();
    }
  }

  // ---- certificate authorities

  async listCas(db: Db = this.db): Promise<CaTable[]> {
    return db.selectFrom('cas').selectAll().orderBy('generation').execute();
  }

  async insertCa(ca: CaTable, db: Db = this.db): Promise<void> {
    await db.insertInto('cas').values(ca).execute();
  }

  // ---- certificates

  async insertCertificate(c: CertificateTable, db: Db = this.db): Promise<void> {
    await db.insertInto('certificates').values(c).execute();
  }

  async getCertificate(serial: string, db: Db = this.db): Promise<CertificateTable | undefined> {
    return db.selectFrom('certificates').selectAll().where('serial', '=', serial).executeTakeFirst();
  }

  /**
   * Revoke every good certificate of a node (optionally only those carrying `role`); no limit
   * on how many. Returns the serials revoked.
   */
  async revokeNodeCertificates(nodeId: string, reason: string, db: Db = this.db, only: { role?: string } = {}): Promise<string[]> {
    return this.revokeGood({ nodeId, role: only.role }, reason, db);
  }

  /**
   * Serials of the good, unexpired admin certificates, locked until the transaction ends, so
   * two revocations cannot both see another admin left and together revoke the last one.
   */
  async lockGoodAdminCertificates(now: number, db: Db = this.db): Promise<string[]> {
    let q = db.selectFrom('certificates').select('serial').where('kind', '=', 'admin').where('status', '=', 'good').where('not_after', '>', now);
    if (this.kind === 'postgres') q = q.forUpdate();
    return (await q.execute()).map((r) => r.serial);
  }

  /** Advance the revocation mark: the CRL leader regenerates when it moved past its last CRL. */
  async bumpRevocationMark(db: Db = this.db): Promise<void> {
    await this.ensureSequence('revocation', 0, db);
    await this.claimRange('revocation', 1, db);
  }

  /** Unexpired good certificates, counted by days to expiry (for metrics). */
  async countGoodByExpiry(now: number, bounds: number[], db: Db = this.db): Promise<number[]> {
    const counts: number[] = [];
    let lo = now;
    for (const b of [...bounds, Number.MAX_SAFE_INTEGER]) {
      const hi = b === Number.MAX_SAFE_INTEGER ? b : now + b;
      const r = await db
        .selectFrom('certificates')
        .select((eb) => eb.fn.countAll<number>().as('n'))
        .where('status', '=', 'good')
        .where('not_after', '>', lo)
        .where('not_after', '<=', hi)
        .executeTakeFirstOrThrow();
      counts.push(Number(r.n));
      lo = hi;
    }
    return counts;
  }

  // ---- nodes

  async insertNode(n: NodeTable, db: Db = this.db): Promise<void> {
    await db.insertInto('nodes').values(n).execute();
  }

  async getNode(id: string, db: Db = this.db): Promise<NodeTable | undefined> {
    return db.selectFrom('nodes').selectAll().where('id', '=', id).executeTakeFirst();
  }

  /**
   * Read a node's row and lock it until the transaction ends (PostgreSQL `FOR UPDATE`; SQLite
   * runs one transaction at a time). Every change to a node or its certificates takes this
   * lock first — renewal, removal, revocation, role changes — so they never interleave.
   */
  async lockNode(id: string, db: Db = this.db): Promise<NodeTable | undefined> {
    let q = db.selectFrom('nodes').selectAll().where('id', '=', id);
    if (this.kind === 'postgres') q = q.forUpdate();
    return q.executeTakeFirst();
  }

  /**
   * One page of nodes in (created_at, id) order, after the key `after`, each with its current
   * certificate's validity joined in (one query, not one per node).
   */
  async listNodesPage(o: { after?: PageKey; limit: number }, db: Db = this.db): Promise<NodeWithCertificate[]> {
    let q = db
      .selectFrom('nodes')
      .leftJoin('certificates', 'certificates.serial', 'nodes.current_serial')
      .select([
        'nodes.id as id', 'nodes.role as role', 'nodes.status as status', 'nodes.created_at as created_at', 'nodes.updated_at as updated_at',
        'nodes.current_serial as current_serial', 'certificates.serial as cert_serial', 'certificates.not_before as cert_not_before',
        'certificates.not_after as cert_not_after', 'certificates.issuer_key_id as cert_issuer_key_id',
      ]);
    const a = o.after;
    if (a) q = q.where((eb) => eb.or([eb('nodes.created_at', '>', a.t), eb.and([eb('nodes.created_at', '=', a.t), eb('nodes.id', '>', a.k)])]));
    return q.orderBy('nodes.created_at').orderBy('nodes.id').limit(o.limit).execute();
  }

  async listNodes(db: Db = this.db): Promise<NodeTable[]> {
    return db.selectFrom('nodes').selectAll().orderBy('created_at').orderBy('id').execute();
  }

  async updateNode(id: string, set: Partial<Omit<NodeTable, 'id'>>, db: Db = this.db): Promise<void> {
    await db.updateTable('nodes').set({ ...set, updated_at: Date.now() }).where('id', '=', id).execute();
  }

  // ---- join tokens

  async getTokenHashes(db: Db = this.db): Promise<Record<string, string>> {
    const rows = await db.selectFrom('tokens').select(['role', 'secret_hash']).execute();
    return Object.fromEntries(rows.map((r) => [r.role, r.secret_hash]));
  }

  async setTokenHash(role: string, secretHash: string, db: Db = this.db): Promise<void> {
    const now = Date.now();
    await db
      .insertInto('tokens')
      .values({ role, secret_hash: secretHash, created_at: now })
      .onConflict((oc) => oc.column('role').doUpdateSet({ secret_hash: secretHash, created_at: now }))
      .execute();
  }

  // ---- sequences (serial number and request ID ranges)

  async ensureSequence(name: string, start: number, db: Db = this.db): Promise<void> {
    await db.insertInto('sequences').values({ name, next: start }).onConflict((oc) => oc.column('name').doNothing()).execute();
  }

  /** Claim `[start, start+increment)` with one atomic statement. */
  async claimRange(name: string, increment: number, db: Db = this.db): Promise<{ start: number; end: number }> {
    const row = await db
      .updateTable('sequences')
      .set((eb) => ({ next: eb('next', '+', increment) }))
      .where('name', '=', name)
      .returning('next')
      .executeTakeFirst();
    if (!row) throw new CairnError('store_corrupt', `sequence ${name} is missing from the store`);
    const end = Number(row.next);
    if (!Number.isSafeInteger(end)) throw new CairnError('store_corrupt', `sequence ${name} is out of range`);
    return { start: end - increment, end };
  }

  // ---- replicas

  async upsertReplica(r: { id: string; address: string; version: string }, db: Db = this.db): Promise<void> {
    const now = Date.now();
    await db
      .insertInto('replicas')
      .values({ ...r, started_at: now, heartbeat_at: now, removed_at: null })
      .onConflict((oc) => oc.column('id').doUpdateSet({ address: r.address, version: r.version, started_at: now, heartbeat_at: now }))
      .execute();
  }

  async heartbeat(id: string, db: Db = this.db): Promise<void> {
    await db.updateTable('replicas').set({ heartbeat_at: Date.now() }).where('id', '=', id).execute();
  }

  /** Replicas that have not been removed. */
  async listReplicas(db: Db = this.db) {
    return db.selectFrom('replicas').selectAll().where('removed_at', 'is', null).orderBy('started_at').execute();
  }

  async getReplica(id: string, db: Db = this.db) {
    return db.selectFrom('replicas').selectAll().where('id', '=', id).executeTakeFirst();
  }

  /**
   * Mark a replica removed and revoke its server certificates (subject
   * `CN=<id>,OU=ca-replica,O=<cluster>`), so agents holding the CRL stop trusting it.
   */
  async removeReplica(id: string, serverSubject: string, db: Db = this.db): Promise<string[]> {
    await db.updateTable('replicas').set({ removed_at: Date.now() }).where('id', '=', id).execute();
    return this.revokeGood({ kind: 'server', subject: serverSubject }, 'cessationOfOperation', db);
  }

  // ---- revocation and CRLs

  /** Current value of a sequence (without claiming). */
  async peekSequence(name: string, db: Db = this.db): Promise<number> {
    const r = await db.selectFrom('sequences').select('next').where('name', '=', name).executeTakeFirst();
    return r ? Number(r.next) : 0;
  }

  /** Mark certificates revoked (only those still good). */
  async revokeCertificates(serials: string[], reason: string, db: Db = this.db): Promise<string[]> {
    if (serials.length === 0) return [];
    return this.revokeGood({ serials }, reason, db);
  }

  /**
   * The one revocation statement: mark the good certificates that match every given filter
   * revoked, and bump the revocation mark when any changed (the CRL leader then publishes).
   */
  private async revokeGood(
    f: { serials?: string[]; nodeId?: string; role?: string; kind?: string; subject?: string },
    reason: string,
    db: Db,
  ): Promise<string[]> {
    // never "every good certificate": a selection by serials, node or kind is required
    if (f.serials === undefined && f.nodeId === undefined && f.kind === undefined) throw new Error('revokeGood: no selection');
    let q = db
      .updateTable('certificates')
      .set({ status: 'revoked', revoked_at: Date.now(), revocation_reason: reason })
      .where('status', '=', 'good');
    if (f.serials !== undefined) q = q.where('serial', 'in', f.serials);
    if (f.nodeId !== undefined) q = q.where('node_id', '=', f.nodeId);
    if (f.role !== undefined) q = q.where('role', '=', f.role);
    if (f.kind !== undefined) q = q.where('kind', '=', f.kind);
    if (f.subject !== undefined) q = q.where('subject', '=', f.subject);
    const rows = await q.returning('serial').execute();
    if (rows.length) await this.bumpRevocationMark(db);
    return rows.map((r) => r.serial);
  }

  async findCertificates(f: { nodeId?: string; status?: string; kind?: string; limit?: number }, db: Db = this.db): Promise<CertificateTable[]> {
    let q = db.selectFrom('certificates').selectAll();
    if (f.nodeId) q = q.where('node_id', '=', f.nodeId);
    if (f.status) q = q.where('status', '=', f.status);
    if (f.kind) q = q.where('kind', '=', f.kind);
    q = q.orderBy('created_at').orderBy('serial');
    return (f.limit === undefined ? q : q.limit(f.limit)).execute();
  }

  /** One page of certificates in (created_at, serial) order, after the key `after`. */
  async findCertificatesPage(f: { nodeId?: string; status?: string; kind?: string; after?: PageKey; limit: number }, db: Db = this.db): Promise<CertificateTable[]> {
    let q = db.selectFrom('certificates').selectAll();
    if (f.nodeId) q = q.where('node_id', '=', f.nodeId);
    if (f.status) q = q.where('status', '=', f.status);
    if (f.kind) q = q.where('kind', '=', f.kind);
    const a = f.after;
    if (a) q = q.where((eb) => eb.or([eb('created_at', '>', a.t), eb.and([eb('created_at', '=', a.t), eb('serial', '>', a.k)])]));
    return q.orderBy('created_at').orderBy('serial').limit(f.limit).execute();
  }

  /** Revoked, unexpired certificates issued by a CA key: the entries of its CRL. */
  async revokedFor(issuerKeyIds: string[], now: number, db: Db = this.db) {
    if (issuerKeyIds.length === 0) return [];
    return db
      .selectFrom('certificates')
      .select(['serial', 'revoked_at', 'revocation_reason'])
      .where('status', '=', 'revoked')
      .where('issuer_key_id', 'in', issuerKeyIds)
      .where('not_after', '>', now)
      .orderBy('serial')
      .execute();
  }

  async latestCrl(caName: string, db: Db = this.db): Promise<CrlTable | undefined> {
    return db.selectFrom('crls').selectAll().where('ca_name', '=', caName).orderBy('number', 'desc').limit(1).executeTakeFirst();
  }

  /** The number of a CA's newest CRL (cheap: tells whether a cached CRL is still the newest). */
  async latestCrlNumber(caName: string, db: Db = this.db): Promise<number | undefined> {
    const r = await db.selectFrom('crls').select('number').where('ca_name', '=', caName).orderBy('number', 'desc').limit(1).executeTakeFirst();
    return r ? Number(r.number) : undefined;
  }

  async insertCrl(c: CrlTable, db: Db = this.db): Promise<void> {
    await db.insertInto('crls').values(c).execute();
  }

  /** Keep the newest `keep` CRLs of a CA. */
  async pruneCrls(caName: string, keep: number, db: Db = this.db): Promise<void> {
    const cutoff = await db.selectFrom('crls').select('number').where('ca_name', '=', caName).orderBy('number', 'desc').offset(keep).limit(1).executeTakeFirst();
    if (cutoff) await db.deleteFrom('crls').where('ca_name', '=', caName).where('number', '<=', cutoff.number).execute();
  }

  // ---- leases: one holder at a time, with a fencing term

  /**
   * Take or keep a lease. The holder extends it while its term is unchanged; anyone takes
   * it (with term + 1) once it has expired. Returns the term held, or null.
   */
  async acquireLease(name: string, holder: string, ttlMs: number, db: Db = this.db): Promise<number | null> {
    const now = Date.now();
    await db.insertInto('leases').values({ name, holder: '', term: 0, expires_at: 0 }).onConflict((oc) => oc.column('name').doNothing()).execute();
    const kept = await db
      .updateTable('leases')
      .set({ expires_at: now + ttlMs })
      .where('name', '=', name)
      .where('holder', '=', holder)
      .where('expires_at', '>', now)
      .returning('term')
      .executeTakeFirst();
    if (kept) return Number(kept.term);
    const taken = await db
      .updateTable('leases')
      .set((eb) => ({ holder, term: eb('term', '+', 1), expires_at: now + ttlMs }))
      .where('name', '=', name)
      .where('expires_at', '<=', now)
      .returning('term')
      .executeTakeFirst();
    return taken ? Number(taken.term) : null;
  }

  /** Whether `holder` still holds the lease at `term` (the fencing check before a leader's write). */
  async holdsLease(name: string, holder: string, term: number, db: Db = this.db): Promise<boolean> {
    const r = await db
      .selectFrom('leases')
      .select('term')
      .where('name', '=', name)
      .where('holder', '=', holder)
      .where('term', '=', term)
      .where('expires_at', '>', Date.now())
      .executeTakeFirst();
    return !!r;
  }

  async releaseLease(name: string, holder: string, db: Db = this.db): Promise<void> {
    await db.updateTable('leases').set({ expires_at: 0 }).where('name', '=', name).where('holder', '=', holder).execute();
  }

  async getLease(name: string, db: Db = this.db) {
    return db.selectFrom('leases').selectAll().where('name', '=', name).executeTakeFirst();
  }

  // ---- audit log

  async audit(actor: string, action: string, detail: Record<string, unknown>, db: Db = this.db): Promise<void> {
    await db
      .insertInto('audit')
      .values({ id: `${Date.now().toString(36)}-${randomBytes(6).toString('hex')}`, at: Date.now(), actor, action, detail: JSON.stringify(detail) })
      .execute();
  }
}
