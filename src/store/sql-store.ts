/**
 * The store on SQL: SQLite (better-sqlite3) or PostgreSQL (pg), through Kysely. Every SQL
 * statement cairn runs is in this file (and migrations.ts); the rest of cairn sees the
 * `Store` interface of store.ts.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import SqliteDatabase from 'better-sqlite3';
import { Kysely, Migrator, PostgresDialect, sql, SqliteDialect, Transaction } from 'kysely';
import pg from 'pg';
import { CairnError } from '../util/errors.js';
import { migrationProvider } from './migrations.js';
import { auditEntryHash, chainUnchained } from './audit-chain.js';
import { pooledRandomBytes } from '../pki/random.js';
import type { AuditSealTable, AuditTable, CaTable, CertificateTable, CrlTable, Database, FailureTable, JoinTokenTable, NodeTable, RotationTable, SigningKeyTable } from './schema.js';
import { redactUrl, type AuditOptions, type ReplicationStatus, type CertificateFilter, type NodePageQuery, type NodeWithCertificate, type PageKey, type Store, type StoreKind, type TableRow } from './store.js';
import { FailoverPool, parsePgUrl } from './pg-failover.js';
import { classify, GuardedDialect, StoreUnavailableError } from './unavailable.js';

// PostgreSQL returns BIGINT as strings; every bigint cairn stores fits in a double (ms times, counters).
pg.types.setTypeParser(20, (v: string) => Number(v));

type Db = Kysely<Database> | Transaction<Database>;

/**
 * SQLite's one connection, for the statements of the join and renewal paths run directly as
 * prepared statements (no query building per request; Kysely stays for everything else).
 * `open` counts this store's transactions begun or waiting for the connection: while one is,
 * a statement from outside it must queue behind it (through Kysely), never run inside it.
 */
interface SqliteHandle {
  prepare(sql: string): SqliteDatabase.Statement;
  open: number;
}

/** A quoted SQL identifier (names come from this file, never from a request). */
const ident = (name: string) => `"${name}"`;

export interface OpenOptions {
  migrate?: boolean;
  poolSize?: number;
  /** PostgreSQL: told when the store moves to another server (a failover); for the log */
  onSwitch?: (host: string, previous: string | null) => void;
}

/**
 * The store whose transaction the current async context runs in. Using that store itself
 * (not the transaction's) from inside the transaction is a bug — on SQLite, whose one
 * connection the transaction holds, it would wait forever — so it fails at once instead.
 */
const openTransaction = new AsyncLocalStorage<SqlStore>();

/** ID of an audit entry or a failure record: its time in base36 (rows sort by it), then 48 random bits. */
function timeOrderedId(at: number): string {
  return `${at.toString(36)}-${pooledRandomBytes(6).toString('hex')}`;
}

/** Open (and migrate) the store. Migration is safe to run from several replicas at once. */
export function openStore(kind: 'sqlite' | 'postgres', location: string, opts: OpenOptions = {}): Promise<SqlStore> {
  return SqlStore.open(kind, location, opts);
}

export class SqlStore implements Store {
  readonly kind: StoreKind;
  readonly location: string;
  origin = '';
  private readonly handle: Db;
  private readonly inTransaction: boolean;
  private readonly lite: SqliteHandle | null;

  private constructor(db: Db, kind: StoreKind, location: string, inTransaction = false, origin = '', lite: SqliteHandle | null = null) {
    this.handle = db;
    this.kind = kind;
    this.location = location;
    this.inTransaction = inTransaction;
    this.origin = origin;
    this.lite = lite;
  }

  /**
   * SQLite's connection for a prepared statement, when one may run now: inside this store's
   * transaction (which holds the connection), or outside when no transaction is open or
   * waiting. Null otherwise (and on PostgreSQL): the caller goes through Kysely.
   */
  private get raw(): SqliteHandle | null {
    const l = this.lite;
    if (!l) return null;
    if (this.inTransaction) return l;
    if (l.open > 0) return null;
    void this.db; // the root store used inside its own transaction throws, as through Kysely
    return l;
  }

  /** Run a prepared statement; a failure of the connection is StoreUnavailableError, as through Kysely. */
  private static exec<T>(l: SqliteHandle, sqlText: string, f: (st: SqliteDatabase.Statement) => T): T {
    try {
      return f(l.prepare(sqlText));
    } catch (e) {
      classify(e);
    }
  }

  /** INSERT of a row's defined columns (prepared statements are cached by their text). */
  private static insertRaw(l: SqliteHandle, table: string, row: object, conflict?: string): void {
    const keys = Object.keys(row).filter((k) => (row as Record<string, unknown>)[k] !== undefined);
    const text = `insert into ${ident(table)} (${keys.map(ident).join(', ')}) values (${keys.map(() => '?').join(', ')})${conflict ? ` on conflict (${ident(conflict)}) do nothing` : ''}`;
    SqlStore.exec(l, text, (st) => st.run(keys.map((k) => (row as Record<string, unknown>)[k])));
  }

  /** The Kysely handle: a transaction inside `transaction()`. For this file (and tests that need raw SQL) only. */
  get db(): Db {
    if (!this.inTransaction && openTransaction.getStore() === this) {
      throw new Error('the store was used directly inside one of its own transactions: use the store the transaction passes (tx)');
    }
    return this.handle;
  }

  static async open(kind: 'sqlite' | 'postgres', location: string, opts: OpenOptions = {}): Promise<SqlStore> {
    let db: Kysely<Database>;
    let lite: SqliteHandle | null = null;
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
      lite = { prepare: cached.prepare, open: 0 };
    } else {
      // one host or several (libpq style): the pool finds the one accepting writes (pg-failover.ts)
      const pool = new FailoverPool(parsePgUrl(location), { max: opts.poolSize ?? 10, connectionTimeoutMillis: 5000, onSwitch: opts.onSwitch });
      db = new Kysely<Database>({ dialect: new GuardedDialect(new PostgresDialect({ pool })) });
    }
    const store = new SqlStore(db, kind, location, false, '', lite);
    if (opts.migrate !== false) await store.migrate(location);
    return store;
  }

  async migrate(location = ''): Promise<void> {
    const migrator = new Migrator({ db: this.db as Kysely<Database>, provider: migrationProvider });
    let res;
    if (this.lite) this.lite.open++;
    try {
      res = await migrator.migrateToLatest();
    } catch (e) {
      throw new StoreUnavailableError(`cannot migrate store ${redactUrl(location)}: ${(e as Error).message}`, { cause: e });
    } finally {
      if (this.lite) this.lite.open--;
    }
    if (res.error) {
      throw new StoreUnavailableError(`cannot migrate store ${redactUrl(location)}: ${(res.error as Error).message ?? res.error}`, { cause: res.error });
    }
  }

  async close(): Promise<void> {
    if (this.inTransaction) throw new Error('close() inside a transaction');
    await (this.db as Kysely<Database>).destroy();
  }

  /**
   * Run `fn` in one transaction: all of it is recorded, or none. `fn` gets a Store whose every
   * method runs inside the transaction; inside one already, `fn` joins it.
   */
  transaction<T>(fn: (tx: Store) => Promise<T>): Promise<T> {
    if (this.inTransaction) return fn(this);
    return this.counted(() => (this.db as Kysely<Database>).transaction().execute((trx) => openTransaction.run(this, () => fn(new SqlStore(trx, this.kind, this.location, true, this.origin, this.lite)))));
  }

  /** A transaction of this store, counted from before it waits for the connection until it ended (see `raw`). */
  private async counted<T>(run: () => Promise<T>): Promise<T> {
    const l = this.lite;
    if (!l) return run();
    l.open++;
    try {
      return await run();
    } finally {
      l.open--;
    }
  }

  /** A read-only transaction that sees one snapshot: REPEATABLE READ on PostgreSQL; one transaction on SQLite (WAL). */
  snapshot<T>(fn: (tx: Store) => Promise<T>): Promise<T> {
    if (this.inTransaction) return fn(this);
    const b = (this.db as Kysely<Database>).transaction();
    return this.counted(() =>
      (this.kind === 'postgres' ? b.setIsolationLevel('repeatable read').setAccessMode('read only') : b).execute((trx) =>
        openTransaction.run(this, () => fn(new SqlStore(trx, this.kind, this.location, true, this.origin, this.lite))),
      ),
    );
  }

  async ping(): Promise<void> {
    await this.db.selectFrom('sequences').select('name').limit(1).execute();
  }

  /** PostgreSQL: whether a commit waits for a synchronous standby (null on SQLite). */
  async replication(): Promise<ReplicationStatus | null> {
    if (this.kind !== 'postgres') return null;
    const r = await sql<{ sc: string; names: string; standbys: number | string; visible: number | string; sync: number | string }>`
      select current_setting('synchronous_commit') as sc, current_setting('synchronous_standby_names') as names,
        (select count(*) from pg_stat_replication) as standbys,
        (select count(*) from pg_stat_replication where sync_state is not null) as visible,
        (select count(*) from pg_stat_replication where sync_state in ('sync', 'quorum')) as sync`.execute(this.db);
    const row = r.rows[0];
    const visible = Number(row.visible);
    return {
      synchronousCommit: row.sc,
      synchronousStandbyNames: row.names,
      standbys: Number(row.standbys),
      // without pg_read_all_stats (or superuser), PostgreSQL hides sync_state
      synchronousStandbys: Number(row.standbys) > 0 && visible === 0 ? null : Number(row.sync),
    };
  }

  // ---- cluster and configuration

  async getCluster() {
    return this.db.selectFrom('cluster').selectAll().executeTakeFirst();
  }

  async insertCluster(c: { id: string; name: string; created_at: number }): Promise<void> {
    await this.db.insertInto('cluster').values(c).execute();
  }

  /** Give the cluster another ID (a root-CA-only restore takes the backup's). */
  async setClusterId(from: string, to: string): Promise<void> {
    await this.db.updateTable('cluster').set({ id: to }).where('id', '=', from).execute();
  }

  async getConfig(): Promise<Record<string, unknown>> {
    const rows = await this.db.selectFrom('config').selectAll().execute();
    return Object.fromEntries(rows.map((r) => [r.key, JSON.parse(r.value)]));
  }

  async setConfig(values: Record<string, unknown>): Promise<void> {
    const now = Date.now();
    for (const [key, v] of Object.entries(values)) {
      await this.db
        .insertInto('config')
        .values({ key, value: JSON.stringify(v), updated_at: now })
        .onConflict((oc) => oc.column('key').doUpdateSet({ value: JSON.stringify(v), updated_at: now }))
        .execute();
    }
  }

  // ---- certificate authorities

  async listCas(): Promise<CaTable[]> {
    return this.db.selectFrom('cas').selectAll().orderBy('generation').execute();
  }

  async insertCa(ca: CaTable): Promise<void> {
    await this.db.insertInto('cas').values(ca).execute();
  }

  async updateCa(id: string, set: Partial<Pick<CaTable, 'status' | 'retired_at' | 'key_sealed'>>): Promise<void> {
    await this.db.updateTable('cas').set(set).where('id', '=', id).execute();
  }

  // ---- root CA rotations

  async listRotations(): Promise<RotationTable[]> {
    return this.db.selectFrom('rotations').selectAll().orderBy('started_at').orderBy('id').execute();
  }

  async insertRotation(r: RotationTable): Promise<void> {
    await this.db.insertInto('rotations').values(r).execute();
  }

  async updateRotation(id: string, set: Partial<Pick<RotationTable, 'state' | 'finished_at'>>): Promise<void> {
    await this.db.updateTable('rotations').set(set).where('id', '=', id).execute();
  }

  /** Active nodes joined to their current certificate's issuer key (for the rotation's progress). */
  private activeNodesWithIssuer() {
    return this.db.selectFrom('nodes').leftJoin('certificates', 'certificates.serial', 'nodes.current_serial').where('nodes.status', '=', 'active');
  }

  async rotationProgress(keyId: string): Promise<{ total: number; converged: number }> {
    const r = await this.activeNodesWithIssuer()
      .select((eb) => [
        eb.fn.countAll<number>().as('total'),
        eb.fn.sum<number>(eb.case().when('certificates.issuer_key_id', '=', keyId).then(1).else(0).end()).as('converged'),
      ])
      .executeTakeFirstOrThrow();
    return { total: Number(r.total), converged: Number(r.converged ?? 0) };
  }

  async unconvergedNodes(keyId: string, limit: number) {
    return this.activeNodesWithIssuer()
      .where((eb) => eb.or([eb('certificates.issuer_key_id', 'is', null), eb('certificates.issuer_key_id', '!=', keyId)]))
      .select(['nodes.id as id', 'nodes.role as role', 'nodes.renewed_at as renewed_at', 'certificates.issuer_key_id as issuer_key_id'])
      .orderBy('nodes.renewed_at')
      .orderBy('nodes.id')
      .limit(limit)
      .execute();
  }

  async requestRenewals(keyId: string, limit: number, now: number): Promise<string[]> {
    const ids = (
      await this.activeNodesWithIssuer()
        .where('nodes.renew_requested_at', 'is', null)
        .where((eb) => eb.or([eb('certificates.issuer_key_id', 'is', null), eb('certificates.issuer_key_id', '!=', keyId)]))
        .select('nodes.id as id')
        .orderBy('nodes.id')
        .limit(limit)
        .execute()
    ).map((r) => r.id);
    if (ids.length) await this.db.updateTable('nodes').set({ renew_requested_at: now }).where('id', 'in', ids).execute();
    return ids;
  }

  async renewalRequestsSince(t: number): Promise<string[]> {
    return (await this.db.selectFrom('nodes').select('id').where('renew_requested_at', '>', t).execute()).map((r) => r.id);
  }

  async clearRenewalRequests(): Promise<void> {
    await this.db.updateTable('nodes').set({ renew_requested_at: null }).where('renew_requested_at', 'is not', null).execute();
  }

  /** Replace every CA row (a root-CA-only restore). */
  async replaceCas(rows: CaTable[]): Promise<void> {
    await this.db.deleteFrom('cas').execute();
    await this.insertRows('cas', rows);
  }

  // ---- certificates

  async insertCertificate(c: CertificateTable): Promise<void> {
    const l = this.raw;
    if (l) return SqlStore.insertRaw(l, 'certificates', c);
    await this.db.insertInto('certificates').values(c).execute();
  }

  /** Record a certificate unless its serial is recorded already (adoption: two replicas may adopt at once). */
  async insertCertificateIfAbsent(c: CertificateTable): Promise<void> {
    await this.db.insertInto('certificates').values(c).onConflict((oc) => oc.column('serial').doNothing()).execute();
  }

  /** Every certificate's serial, kind and node (the integrity check). */
  async listCertificateOwners(): Promise<Pick<CertificateTable, 'serial' | 'kind' | 'node_id'>[]> {
    return this.db.selectFrom('certificates').select(['serial', 'kind', 'node_id']).execute();
  }

  /** Revoke every good certificate issued by these CA keys (a root-CA-only restore replaced them). */
  async revokeIssuedBy(issuerKeyIds: string[], reason: string): Promise<number> {
    if (issuerKeyIds.length === 0) return 0;
    return (await this.revokeGood({ issuerKeyIds }, reason)).length;
  }

  async getCertificate(serial: string): Promise<CertificateTable | undefined> {
    const l = this.raw;
    if (l) return SqlStore.exec(l, 'select * from "certificates" where "serial" = ?', (st) => st.get(serial) as CertificateTable | undefined);
    return this.db.selectFrom('certificates').selectAll().where('serial', '=', serial).executeTakeFirst();
  }

  /**
   * Revoke every good certificate of a node (optionally only those carrying `role`); no limit
   * on how many. Returns the serials revoked.
   */
  async revokeNodeCertificates(nodeId: string, reason: string, only: { role?: string } = {}): Promise<string[]> {
    return this.revokeGood({ nodeId, role: only.role }, reason);
  }

  /**
   * Serials of the good, unexpired admin certificates, locked until the transaction ends, so
   * two revocations cannot both see another admin left and together revoke the last one.
   */
  async lockGoodAdminCertificates(now: number): Promise<string[]> {
    let q = this.db.selectFrom('certificates').select('serial').where('kind', '=', 'admin').where('status', '=', 'good').where('not_after', '>', now);
    if (this.kind === 'postgres') q = q.forUpdate();
    return (await q.execute()).map((r) => r.serial);
  }

  /** Advance the revocation mark: the CRL leader regenerates when it moved past its last CRL. */
  async bumpRevocationMark(): Promise<void> {
    await this.ensureSequence('revocation', 0);
    await this.claimRange('revocation', 1);
  }

  /** Unexpired good certificates, counted by days to expiry (for metrics). */
  async countGoodByExpiry(now: number, bounds: number[]): Promise<number[]> {
    const counts: number[] = [];
    let lo = now;
    for (const b of [...bounds, Number.MAX_SAFE_INTEGER]) {
      const hi = b === Number.MAX_SAFE_INTEGER ? b : now + b;
      const r = await this.db
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

  async insertNode(n: NodeTable, o: { ifAbsent?: boolean } = {}): Promise<void> {
    const l = this.raw;
    if (l) return SqlStore.insertRaw(l, 'nodes', n, o.ifAbsent ? 'id' : undefined);
    const q = this.db.insertInto('nodes').values(n);
    await (o.ifAbsent ? q.onConflict((oc) => oc.column('id').doNothing()) : q).execute();
  }

  async getNode(id: string): Promise<NodeTable | undefined> {
    const l = this.raw;
    if (l) return SqlStore.exec(l, 'select * from "nodes" where "id" = ?', (st) => st.get(id) as NodeTable | undefined);
    return this.db.selectFrom('nodes').selectAll().where('id', '=', id).executeTakeFirst();
  }

  /**
   * Read a node's row and lock it until the transaction ends (PostgreSQL `FOR UPDATE`; SQLite
   * runs one transaction at a time). Every change to a node or its certificates takes this
   * lock first — renewal, removal, revocation, role changes — so they never interleave.
   */
  async lockNode(id: string): Promise<NodeTable | undefined> {
    // SQLite: the transaction holds the write lock from its start (begin immediate)
    const l = this.raw;
    if (l) return SqlStore.exec(l, 'select * from "nodes" where "id" = ?', (st) => st.get(id) as NodeTable | undefined);
    let q = this.db.selectFrom('nodes').selectAll().where('id', '=', id);
    if (this.kind === 'postgres') q = q.forUpdate();
    return q.executeTakeFirst();
  }

  /**
   * One page of nodes in (created_at, id) order, after the key `after`, each with its current
   * certificate's validity joined in (one query, not one per node).
   */
  async listNodesPage(o: NodePageQuery): Promise<NodeWithCertificate[]> {
    // the sort key of a row (`sort_t`) and its ID are the page's order: the cursor holds both
    const key =
      o.sort === 'expiry' ? sql<number>`coalesce(certificates.not_after, 0)`
      : o.sort === 'renewed' ? sql<number>`coalesce(nodes.renewed_at, nodes.created_at)`
      : o.sort === 'id' ? sql<number>`0`
      : sql<number>`nodes.created_at`;
    let q = this.db
      .selectFrom('nodes')
      .leftJoin('certificates', 'certificates.serial', 'nodes.current_serial')
      .select([
        'nodes.id as id', 'nodes.role as role', 'nodes.status as status', 'nodes.created_at as created_at', 'nodes.updated_at as updated_at',
        'nodes.current_serial as current_serial', 'nodes.renewed_at as renewed_at', 'certificates.serial as cert_serial', 'certificates.not_before as cert_not_before',
        'certificates.not_after as cert_not_after', 'certificates.issuer_key_id as cert_issuer_key_id', 'certificates.status as cert_status', key.as('sort_t'),
      ]);
    if (o.role) q = q.where('nodes.role', '=', o.role);
    if (o.status) q = q.where('nodes.status', '=', o.status);
    // IDs are lowercase base36: a prefix of them needs no escaping for LIKE
    if (o.idPrefix) q = q.where('nodes.id', 'like', `${o.idPrefix}%`);
    const a = o.after;
    const desc = o.desc === true;
    const cmp = desc ? '<' : '>';
    if (a && o.sort === 'id') q = q.where('nodes.id', cmp, a.k);
    else if (a) q = q.where((eb) => eb.or([eb(key, cmp, a.t), eb.and([eb(key, '=', a.t), eb('nodes.id', cmp, a.k)])]));
    const dir = desc ? 'desc' : 'asc';
    if (o.sort !== 'id') q = q.orderBy(key, dir);
    return q.orderBy('nodes.id', dir).limit(o.limit).execute();
  }

  async countNodes(): Promise<{ role: string; status: string; n: number }[]> {
    const rows = await this.db
      .selectFrom('nodes')
      .select(['role', 'status', (eb) => eb.fn.countAll<number>().as('n')])
      .groupBy(['role', 'status'])
      .orderBy('role')
      .orderBy('status')
      .execute();
    return rows.map((r) => ({ role: r.role, status: r.status, n: Number(r.n) }));
  }

  async listNodes(): Promise<NodeTable[]> {
    return this.db.selectFrom('nodes').selectAll().orderBy('created_at').orderBy('id').execute();
  }

  async updateNode(id: string, set: Partial<Omit<NodeTable, 'id'>>): Promise<void> {
    const l = this.raw;
    if (l) {
      const row: Record<string, unknown> = { ...set, updated_at: Date.now() };
      const keys = Object.keys(row).filter((k) => row[k] !== undefined);
      SqlStore.exec(l, `update "nodes" set ${keys.map((k) => `${ident(k)} = ?`).join(', ')} where "id" = ?`, (st) => st.run([...keys.map((k) => row[k]), id]));
      return;
    }
    await this.db.updateTable('nodes').set({ ...set, updated_at: Date.now() }).where('id', '=', id).execute();
  }

  async expiredNodes(before: number, limit: number): Promise<string[]> {
    const rows = await this.db
      .selectFrom('nodes')
      .innerJoin('certificates', 'certificates.serial', 'nodes.current_serial')
      .select('nodes.id as id')
      .where('nodes.status', '=', 'active')
      .where('certificates.not_after', '<=', before)
      .orderBy('certificates.not_after')
      .orderBy('nodes.id')
      .limit(limit)
      .execute();
    return rows.map((r) => r.id);
  }

  // ---- join tokens

  async listClusters() {
    return this.db.selectFrom('cluster').selectAll().execute();
  }

  async getTokenHashes(): Promise<Record<string, string>> {
    const l = this.raw;
    const rows = l
      ? SqlStore.exec(l, 'select "role", "secret_hash" from "tokens"', (st) => st.all() as { role: string; secret_hash: string }[])
      : await this.db.selectFrom('tokens').select(['role', 'secret_hash']).execute();
    return Object.fromEntries(rows.map((r) => [r.role, r.secret_hash]));
  }

  async setTokenHash(role: string, secretHash: string): Promise<void> {
    const now = Date.now();
    await this.db
      .insertInto('tokens')
      .values({ role, secret_hash: secretHash, created_at: now })
      .onConflict((oc) => oc.column('role').doUpdateSet({ secret_hash: secretHash, created_at: now }))
      .execute();
  }

  // ---- limited join tokens

  async insertJoinToken(t: JoinTokenTable): Promise<void> {
    await this.db.insertInto('join_tokens').values(t).execute();
  }

  async getJoinTokenByHash(secretHash: string): Promise<JoinTokenTable | undefined> {
    const l = this.raw;
    if (l) return SqlStore.exec(l, 'select * from "join_tokens" where "secret_hash" = ?', (st) => st.get(secretHash) as JoinTokenTable | undefined);
    return this.db.selectFrom('join_tokens').selectAll().where('secret_hash', '=', secretHash).executeTakeFirst();
  }

  /** One conditional UPDATE: of two replicas racing for the last use, exactly one gets a row back. */
  async useJoinToken(secretHash: string, now: number): Promise<JoinTokenTable | undefined> {
    const l = this.raw;
    if (l) {
      return SqlStore.exec(
        l,
        'update "join_tokens" set "uses" = "uses" + 1 where "secret_hash" = ? and "revoked_at" is null and "expires_at" > ? and "uses" < "max_uses" returning *',
        (st) => st.get(secretHash, now) as JoinTokenTable | undefined,
      );
    }
    return this.db
      .updateTable('join_tokens')
      .set((eb) => ({ uses: eb('uses', '+', 1) }))
      .where('secret_hash', '=', secretHash)
      .where('revoked_at', 'is', null)
      .where('expires_at', '>', now)
      .where((eb) => eb('uses', '<', eb.ref('max_uses')))
      .returningAll()
      .executeTakeFirst();
  }

  async listJoinTokens(): Promise<JoinTokenTable[]> {
    return this.db.selectFrom('join_tokens').selectAll().orderBy('created_at').orderBy('id').execute();
  }

  async revokeJoinToken(id: string, now: number): Promise<boolean> {
    const r = await this.db.updateTable('join_tokens').set({ revoked_at: now }).where('id', '=', id).where('revoked_at', 'is', null).executeTakeFirst();
    return Number(r.numUpdatedRows) > 0;
  }

  // ---- sequences (serial number and request ID ranges)

  async ensureSequence(name: string, start: number): Promise<void> {
    const l = this.raw;
    if (l) return SqlStore.insertRaw(l, 'sequences', { name, next: start }, 'name');
    await this.db.insertInto('sequences').values({ name, next: start }).onConflict((oc) => oc.column('name').doNothing()).execute();
  }

  /** Claim `[start, start+increment)` with one atomic statement. */
  async claimRange(name: string, increment: number): Promise<{ start: number; end: number }> {
    const l = this.raw;
    const row = l
      ? SqlStore.exec(l, 'update "sequences" set "next" = "next" + ? where "name" = ? returning "next"', (st) => st.get(increment, name) as { next: number } | undefined)
      : await this.db
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

  async upsertReplica(r: { id: string; address: string; version: string }): Promise<void> {
    const now = Date.now();
    await this.db
      .insertInto('replicas')
      .values({ ...r, started_at: now, heartbeat_at: now, removed_at: null })
      .onConflict((oc) => oc.column('id').doUpdateSet({ address: r.address, version: r.version, started_at: now, heartbeat_at: now }))
      .execute();
  }

  async heartbeat(id: string): Promise<void> {
    await this.db.updateTable('replicas').set({ heartbeat_at: Date.now() }).where('id', '=', id).execute();
  }

  /** Replicas that have not been removed. */
  async listReplicas() {
    return this.db.selectFrom('replicas').selectAll().where('removed_at', 'is', null).orderBy('started_at').execute();
  }

  async getReplica(id: string) {
    return this.db.selectFrom('replicas').selectAll().where('id', '=', id).executeTakeFirst();
  }

  /**
   * Mark a replica removed and revoke its server certificates (subject
   * `CN=<id>,OU=ca-replica,O=<cluster>`), so agents holding the CRL stop trusting it.
   */
  async removeReplica(id: string, serverSubject: string): Promise<string[]> {
    await this.db.updateTable('replicas').set({ removed_at: Date.now() }).where('id', '=', id).execute();
    return this.revokeGood({ kind: 'server', subject: serverSubject }, 'cessationOfOperation');
  }

  // ---- revocation and CRLs

  /** Set a sequence's next value (a root-CA-only restore moves serials to a block of their own). */
  async setSequence(name: string, next: number): Promise<void> {
    await this.db.updateTable('sequences').set({ next }).where('name', '=', name).execute();
  }

  async listSequenceNames(): Promise<string[]> {
    return (await this.db.selectFrom('sequences').select('name').execute()).map((s) => s.name);
  }

  /** Current value of a sequence (without claiming). */
  async peekSequence(name: string): Promise<number> {
    const r = await this.db.selectFrom('sequences').select('next').where('name', '=', name).executeTakeFirst();
    return r ? Number(r.next) : 0;
  }

  /** Mark certificates revoked (only those still good). */
  async revokeCertificates(serials: string[], reason: string): Promise<string[]> {
    if (serials.length === 0) return [];
    return this.revokeGood({ serials }, reason);
  }

  /**
   * The one revocation statement: mark the good certificates that match every given filter
   * revoked, and bump the revocation mark when any changed (the CRL leader then publishes).
   */
  private async revokeGood(
    f: { serials?: string[]; nodeId?: string; role?: string; kind?: string; subject?: string; issuerKeyIds?: string[] },
    reason: string,
  ): Promise<string[]> {
    // never "every good certificate": a selection by serials, node or kind is required
    if (f.serials === undefined && f.nodeId === undefined && f.kind === undefined && f.issuerKeyIds === undefined) throw new Error('revokeGood: no selection');
    const l = this.raw;
    if (l) {
      const where = ['"status" = \'good\''];
      const args: unknown[] = [Date.now(), reason];
      const eq = (col: string, v: string | undefined) => {
        if (v === undefined) return;
        where.push(`${ident(col)} = ?`);
        args.push(v);
      };
      const among = (col: string, vs: string[] | undefined) => {
        if (vs === undefined) return;
        where.push(vs.length ? `${ident(col)} in (${vs.map(() => '?').join(', ')})` : '0 = 1');
        args.push(...vs);
      };
      among('serial', f.serials);
      eq('node_id', f.nodeId);
      eq('role', f.role);
      eq('kind', f.kind);
      eq('subject', f.subject);
      among('issuer_key_id', f.issuerKeyIds);
      const text = `update "certificates" set "status" = 'revoked', "revoked_at" = ?, "revocation_reason" = ? where ${where.join(' and ')} returning "serial"`;
      const rows = SqlStore.exec(l, text, (st) => st.all(args) as { serial: string }[]);
      if (rows.length) await this.bumpRevocationMark();
      return rows.map((r) => r.serial);
    }
    let q = this.db
      .updateTable('certificates')
      .set({ status: 'revoked', revoked_at: Date.now(), revocation_reason: reason })
      .where('status', '=', 'good');
    if (f.serials !== undefined) q = q.where('serial', 'in', f.serials);
    if (f.nodeId !== undefined) q = q.where('node_id', '=', f.nodeId);
    if (f.role !== undefined) q = q.where('role', '=', f.role);
    if (f.kind !== undefined) q = q.where('kind', '=', f.kind);
    if (f.subject !== undefined) q = q.where('subject', '=', f.subject);
    if (f.issuerKeyIds !== undefined) q = q.where('issuer_key_id', 'in', f.issuerKeyIds);
    const rows = await q.returning('serial').execute();
    if (rows.length) await this.bumpRevocationMark();
    return rows.map((r) => r.serial);
  }

  /** Certificates matching a filter (node, status, kind, expiry window). */
  private certificates(f: CertificateFilter & { notAfterBetween?: [number, number] }) {
    let q = this.db.selectFrom('certificates').selectAll();
    if (f.nodeId) q = q.where('node_id', '=', f.nodeId);
    if (f.status) q = q.where('status', '=', f.status);
    if (f.kind) q = q.where('kind', '=', f.kind);
    if (f.subject) q = q.where('subject', '=', f.subject);
    if (f.notAfterBetween) q = q.where('not_after', '>', f.notAfterBetween[0]).where('not_after', '<=', f.notAfterBetween[1]);
    return q;
  }

  async findCertificates(f: CertificateFilter & { limit?: number }): Promise<CertificateTable[]> {
    const q = this.certificates(f).orderBy('created_at').orderBy('serial');
    return (f.limit === undefined ? q : q.limit(f.limit)).execute();
  }

  /** One page of certificates in (created_at, serial) order, after the key `after`. */
  async findCertificatesPage(f: CertificateFilter & { notAfterBetween?: [number, number]; after?: PageKey; limit: number }): Promise<CertificateTable[]> {
    let q = this.certificates(f);
    const a = f.after;
    if (a) q = q.where((eb) => eb.or([eb('created_at', '>', a.t), eb.and([eb('created_at', '=', a.t), eb('serial', '>', a.k)])]));
    return q.orderBy('created_at').orderBy('serial').limit(f.limit).execute();
  }

  /**
   * Revoked, unexpired certificates issued by one of these CA keys. `recent`: read through the
   * partial index on revoked_at, for a query that also asks for recent revocations — SQLite's
   * planner, without statistics, would take (issuer_key_id, status, not_after) and read every
   * revoked row (Kysely cannot write INDEXED BY on a table; SQLite flattens the subquery and
   * keeps it).
   */
  private revokedBy(issuerKeyIds: string[], now: number, recent = false) {
    const table =
      recent && this.kind === 'sqlite'
        ? sql<CertificateTable>`(select * from certificates indexed by certificates_revoked_at)`.as('certificates')
        : sql<CertificateTable>`certificates`.as('certificates');
    return this.db
      .selectFrom(table)
      .select(['serial', 'revoked_at', 'revocation_reason', 'not_after'])
      .where('status', '=', sql.lit('revoked')) // a literal: the partial index's predicate, which a parameter does not match
      .where('issuer_key_id', 'in', issuerKeyIds)
      .where('not_after', '>', now);
  }

  /** The entries of a CRL of these CA keys. */
  async revokedFor(issuerKeyIds: string[], now: number) {
    if (issuerKeyIds.length === 0) return [];
    return this.revokedBy(issuerKeyIds, now).orderBy('serial').execute();
  }

  /** The entries of a CRL revoked at or after `since`. */
  async revokedSince(issuerKeyIds: string[], now: number, since: number) {
    if (issuerKeyIds.length === 0) return [];
    return this.revokedBy(issuerKeyIds, now, true).where('revoked_at', '>=', since).execute();
  }

  async countRevoked(issuerKeyIds: string[], now: number): Promise<number> {
    if (issuerKeyIds.length === 0) return 0;
    const r = await this.revokedBy(issuerKeyIds, now)
      .clearSelect()
      .select((eb) => eb.fn.countAll<number>().as('n'))
      .executeTakeFirstOrThrow();
    return Number(r.n);
  }

  /** Revocations an external CA has not recorded yet, oldest first. */
  async unforwardedRevocations(issuerKeyIds: string[], now: number, limit: number) {
    if (issuerKeyIds.length === 0) return [];
    return this.revokedBy(issuerKeyIds, now).where('forwarded_at', 'is', null).orderBy('revoked_at').orderBy('serial').limit(limit).execute();
  }

  async markForwarded(serials: string[], at: number): Promise<void> {
    if (serials.length === 0) return;
    await this.db.updateTable('certificates').set({ forwarded_at: at }).where('serial', 'in', serials).where('status', '=', 'revoked').execute();
  }

  async latestCrl(caName: string): Promise<CrlTable | undefined> {
    return this.db.selectFrom('crls').selectAll().where('ca_name', '=', caName).orderBy('number', 'desc').limit(1).executeTakeFirst();
  }

  async latestCrlHead(caName: string): Promise<Omit<CrlTable, 'der'> | undefined> {
    return this.db
      .selectFrom('crls')
      .select(['ca_name', 'number', 'this_update', 'next_update', 'revocation_mark', 'entries', 'replica_id', 'term'])
      .where('ca_name', '=', caName)
      .orderBy('number', 'desc')
      .limit(1)
      .executeTakeFirst();
  }

  async latestCrlNumber(caName: string): Promise<number | undefined> {
    const r = await this.db.selectFrom('crls').select('number').where('ca_name', '=', caName).orderBy('number', 'desc').limit(1).executeTakeFirst();
    return r ? Number(r.number) : undefined;
  }

  async insertCrl(c: CrlTable): Promise<void> {
    await this.db.insertInto('crls').values(c).execute();
  }

  /** Drop every CRL (their signing keys were replaced). */
  async deleteCrls(): Promise<void> {
    await this.db.deleteFrom('crls').execute();
  }

  /** Keep the newest `keep` CRLs of a CA. */
  async pruneCrls(caName: string, keep: number): Promise<void> {
    const cutoff = await this.db.selectFrom('crls').select('number').where('ca_name', '=', caName).orderBy('number', 'desc').offset(keep).limit(1).executeTakeFirst();
    if (cutoff) await this.db.deleteFrom('crls').where('ca_name', '=', caName).where('number', '<=', cutoff.number).execute();
  }

  // ---- leases: one holder at a time, with a fencing term

  /**
   * Take or keep a lease. The holder extends it while its term is unchanged; anyone takes
   * it (with term + 1) once it has expired. Returns the term held, or null.
   */
  async acquireLease(name: string, holder: string, ttlMs: number): Promise<number | null> {
    const now = Date.now();
    await this.db.insertInto('leases').values({ name, holder: '', term: 0, expires_at: 0 }).onConflict((oc) => oc.column('name').doNothing()).execute();
    const kept = await this.db
      .updateTable('leases')
      .set({ expires_at: now + ttlMs })
      .where('name', '=', name)
      .where('holder', '=', holder)
      .where('expires_at', '>', now)
      .returning('term')
      .executeTakeFirst();
    if (kept) return Number(kept.term);
    const taken = await this.db
      .updateTable('leases')
      .set((eb) => ({ holder, term: eb('term', '+', 1), expires_at: now + ttlMs }))
      .where('name', '=', name)
      .where('expires_at', '<=', now)
      .returning('term')
      .executeTakeFirst();
    return taken ? Number(taken.term) : null;
  }

  /** Whether `holder` still holds the lease at `term` (the fencing check before a leader's write). */
  async holdsLease(name: string, holder: string, term: number): Promise<boolean> {
    const r = await this.db
      .selectFrom('leases')
      .select('term')
      .where('name', '=', name)
      .where('holder', '=', holder)
      .where('term', '=', term)
      .where('expires_at', '>', Date.now())
      .executeTakeFirst();
    return !!r;
  }

  async releaseLease(name: string, holder: string): Promise<void> {
    await this.db.updateTable('leases').set({ expires_at: 0 }).where('name', '=', name).where('holder', '=', holder).execute();
  }

  async getLease(name: string) {
    return this.db.selectFrom('leases').selectAll().where('name', '=', name).executeTakeFirst();
  }

  // ---- audit log

  /**
   * Append an entry to the chain, in the caller's transaction (or one of its own): the head
   * row is locked (PostgreSQL FOR UPDATE; SQLite's transactions take the write lock as they
   * begin), so entries from every replica are chained one at a time, and an entry exists only
   * if the change it records committed.
   */
  async audit(actor: string, action: string, detail: Record<string, unknown>, o: AuditOptions = {}): Promise<void> {
    if (!this.inTransaction) return this.transaction((tx) => tx.audit(actor, action, detail, o));
    const d = detail as Record<string, unknown>;
    const about = o.subject ?? [d.node, d.serial, d.replica, d.user, d.role].find((v) => typeof v === 'string');
    const l = this.raw;
    if (l) {
      const head = SqlStore.exec(l, 'select "seq", "hash" from "audit_head" where "id" = \'chain\'', (st) => st.get() as { seq: number; hash: string } | undefined);
      // the head's first entry (rare) goes the general way below
      if (head) {
        const e = this.auditEntry(Number(head.seq) + 1, actor, action, about, detail, o);
        const hash = auditEntryHash(head.hash, e);
        SqlStore.insertRaw(l, 'audit', { ...e, prev_hash: head.hash, hash });
        SqlStore.exec(l, 'update "audit_head" set "seq" = ?, "hash" = ? where "id" = \'chain\'', (st) => st.run(e.seq, hash));
        return;
      }
    }
    let hq = this.db.selectFrom('audit_head').select(['seq', 'hash']).where('id', '=', 'chain');
    if (this.kind === 'postgres') hq = hq.forUpdate();
    let head = await hq.executeTakeFirst();
    if (!head) {
      // the first entry of a new store, or the first after older (unchained) entries were restored
      await this.db.insertInto('audit_head').values({ id: 'chain', seq: 0, hash: '' }).onConflict((oc) => oc.column('id').doNothing()).execute();
      if (this.kind === 'postgres') await this.db.selectFrom('audit_head').select('seq').where('id', '=', 'chain').forUpdate().execute();
      head = await chainUnchained(this.db as Kysely<any>);
    }
    const e = this.auditEntry(Number(head.seq) + 1, actor, action, about, detail, o);
    const hash = auditEntryHash(head.hash, e);
    await this.db.insertInto('audit').values({ ...e, prev_hash: head.hash, hash }).execute();
    await this.db.updateTable('audit_head').set({ seq: e.seq, hash }).where('id', '=', 'chain').execute();
  }

  private auditEntry(seq: number, actor: string, action: string, about: unknown, detail: Record<string, unknown>, o: AuditOptions) {
    const at = Date.now();
    return {
      seq,
      id: timeOrderedId(at),
      at,
      replica_id: this.origin,
      actor,
      action,
      subject: typeof about === 'string' ? about : '',
      outcome: o.outcome ?? 'success',
      detail: JSON.stringify(detail),
    };
  }

  async auditChain(f: { afterSeq: number; limit: number }): Promise<AuditTable[]> {
    return this.db.selectFrom('audit').selectAll().where('seq', '>', f.afterSeq).orderBy('seq').limit(f.limit).execute();
  }

  async countUnchainedAudit(): Promise<number> {
    const r = await this.db.selectFrom('audit').select((eb) => eb.fn.countAll<number>().as('n')).where('seq', 'is', null).executeTakeFirst();
    return Number(r?.n ?? 0);
  }

  async auditHead() {
    return this.db.selectFrom('audit_head').selectAll().where('id', '=', 'chain').executeTakeFirst();
  }

  async insertAuditSeal(s: AuditSealTable): Promise<void> {
    await this.db.insertInto('audit_seals').values(s).execute();
  }

  async auditSeals(f: { afterSeq: number; limit: number }): Promise<AuditSealTable[]> {
    return this.db.selectFrom('audit_seals').selectAll().where('seq', '>', f.afterSeq).orderBy('seq').orderBy('at').limit(f.limit).execute();
  }

  async latestAuditSeal(): Promise<AuditSealTable | undefined> {
    return this.db.selectFrom('audit_seals').selectAll().orderBy('seq', 'desc').orderBy('at', 'desc').limit(1).executeTakeFirst();
  }

  // ---- subsystem certificates

  async listSigningKeys(): Promise<SigningKeyTable[]> {
    return this.db.selectFrom('signing_keys').selectAll().orderBy('created_at').orderBy('id').execute();
  }

  async insertSigningKey(k: SigningKeyTable): Promise<void> {
    await this.db.insertInto('signing_keys').values(k).execute();
  }

  async deleteSigningKeys(ids: string[]): Promise<void> {
    if (ids.length) await this.db.deleteFrom('signing_keys').where('id', 'in', ids).execute();
  }

  /**
   * One page of the audit log, newest first ((at, id) descending, before the key `after`);
   * `action` matches exactly or, ending in ".", as a prefix ("node." is every node action).
   */
  async auditPage(f: { after?: PageKey; limit: number; action?: string; actor?: string; since?: number }): Promise<AuditTable[]> {
    let q = this.db.selectFrom('audit').selectAll();
    if (f.since !== undefined) q = q.where('at', '>=', f.since);
    if (f.action) q = f.action.endsWith('.') ? q.where('action', 'like', `${f.action}%`) : q.where('action', '=', f.action);
    if (f.actor) q = q.where('actor', '=', f.actor);
    const a = f.after;
    if (a) q = q.where((eb) => eb.or([eb('at', '<', a.t), eb.and([eb('at', '=', a.t), eb('id', '<', a.k)])]));
    return q.orderBy('at', 'desc').orderBy('id', 'desc').limit(f.limit).execute();
  }

  // ---- refused joins and renewals (a bounded record for the dashboard)

  async insertFailure(f: Omit<FailureTable, 'id'>): Promise<void> {
    await this.db.insertInto('failures').values({ id: timeOrderedId(f.at), ...f }).execute();
  }

  async recentFailures(limit: number): Promise<FailureTable[]> {
    return this.db.selectFrom('failures').selectAll().orderBy('at', 'desc').orderBy('id', 'desc').limit(limit).execute();
  }

  /** Keep the newest `keep` records. */
  async pruneFailures(keep: number): Promise<void> {
    const cutoff = await this.db.selectFrom('failures').select('at').orderBy('at', 'desc').offset(keep).limit(1).executeTakeFirst();
    if (cutoff) await this.db.deleteFrom('failures').where('at', '<=', cutoff.at).execute();
  }

  // ---- whole tables (backup and restore)

  /** Migration names applied to this store. */
  async appliedMigrations(): Promise<string[]> {
    const r = await sql<{ name: string }>`select name from kysely_migration order by name`.execute(this.db);
    return r.rows.map((x) => x.name);
  }

  /** Tables cairn's migrations made (in cairn's schema), sorted. */
  async tableNames(): Promise<string[]> {
    const tables = (await this.db.introspection.getTables()).filter((t) => !t.isView);
    const home = tables.find((t) => t.name === 'cluster')?.schema;
    return tables
      .filter((t) => t.schema === home && !t.name.startsWith('kysely_'))
      .map((t) => t.name)
      .sort();
  }

  async dumpTable(table: string): Promise<TableRow[]> {
    return (await this.db.selectFrom(table as keyof Database).selectAll().execute()) as TableRow[];
  }

  /** Rows in a table; null when the store has no such table. */
  async countRows(table: string): Promise<number | null> {
    if (!(await this.tableNames()).includes(table)) return null;
    const r = await this.db.selectFrom(table as keyof Database).select((eb) => eb.fn.countAll<number>().as('n')).executeTakeFirst();
    return Number(r?.n ?? 0);
  }

  /** Insert rows as they are, in batches. */
  async insertRows(table: string, rows: object[]): Promise<void> {
    const BATCH = 200;
    for (let i = 0; i < rows.length; i += BATCH) {
      try {
        await this.db.insertInto(table as keyof Database).values(rows.slice(i, i + BATCH) as never).execute();
      } catch (e) {
        throw new CairnError('restore_failed', `cannot restore table ${table}: ${(e as Error).message}`);
      }
    }
  }
}
