/**
 * One typed error for "the store cannot be reached": the store layer raises it, so callers
 * (the HTTP server, the CLI) never look at driver error codes.
 *
 * A kysely dialect wrapper classifies failures where they happen: any failure to get a
 * connection (pool connect: refused, unreachable, timed out, database not accepting
 * connections, authentication at connect time) is the store being unavailable; a query that
 * fails because the connection broke (socket errors, SQLSTATE class 08, 57P01–57P03, 53300,
 * "Connection terminated") too, and so does a write refused because the server is now a
 * standby (25006). Errors about the query itself (constraints, syntax) pass
 * through unchanged.
 */
import { CompiledQuery } from 'kysely';
import type { DatabaseConnection, Dialect, Driver, Kysely, QueryCompiler, TransactionSettings, QueryResult, DatabaseIntrospector, DialectAdapter } from 'kysely';
import { CairnError } from '../util/errors.js';

export class StoreUnavailableError extends CairnError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('store_unavailable', message);
    this.name = 'StoreUnavailableError';
    if (options && 'cause' in options) (this as { cause?: unknown }).cause = options.cause;
  }
}

const SOCKET_CODES = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'ENOTFOUND', 'EHOSTUNREACH', 'ENETUNREACH', 'EAI_AGAIN', 'ECONNABORTED']);
// SQLSTATE: admin/crash shutdown, cannot connect now, too many connections, and a write
// refused by a standby (the server was the primary, and is no longer: a failover)
const PG_UNAVAILABLE = new Set(['57P01', '57P02', '57P03', '53300', '25006']);
const SQLITE_UNAVAILABLE = /^SQLITE_(BUSY|LOCKED|IOERR|CANTOPEN)/;
const MESSAGES = /Connection terminated|connection error|timeout exceeded when trying to connect|database is locked/i;

/** Whether a driver error means the connection (not the query) failed. */
export function isConnectionFailure(e: unknown, depth = 0): boolean {
  if (!e || typeof e !== 'object' || depth > 4) return false;
  const err = e as { code?: unknown; message?: unknown; errors?: unknown; cause?: unknown };
  const code = typeof err.code === 'string' ? err.code : '';
  if (SOCKET_CODES.has(code) || PG_UNAVAILABLE.has(code) || /^08[0-9A-Z]{3}$/.test(code) || SQLITE_UNAVAILABLE.test(code)) return true;
  if (typeof err.message === 'string' && MESSAGES.test(err.message)) return true;
  // AggregateError (every address of a host refused), errors wrapped with a cause
  if (Array.isArray(err.errors) && err.errors.some((x) => isConnectionFailure(x, depth + 1))) return true;
  return isConnectionFailure(err.cause, depth + 1);
}

function describe(e: unknown): string {
  const err = e as { code?: unknown; message?: unknown; errors?: { message?: unknown }[] };
  const msg = typeof err?.message === 'string' && err.message ? err.message : Array.isArray(err?.errors) ? String(err.errors[0]?.message ?? '') : String(e);
  return typeof err?.code === 'string' ? `${msg} (${err.code})` : msg;
}

const unavailable = (e: unknown) => (e instanceof StoreUnavailableError ? e : new StoreUnavailableError(`the store is unavailable: ${describe(e)}`, { cause: e }));

/** Rethrow a connection failure as StoreUnavailableError, anything else unchanged (also for SQLite statements run directly, sql-store.ts). */
export function classify(e: unknown): never {
  throw isConnectionFailure(e) ? unavailable(e) : e;
}

class GuardedConnection implements DatabaseConnection {
  constructor(readonly inner: DatabaseConnection) {}
  executeQuery<R>(q: CompiledQuery): Promise<QueryResult<R>> {
    return this.inner.executeQuery<R>(q).catch(classify);
  }
  async *streamQuery<R>(q: CompiledQuery, chunkSize?: number): AsyncIterableIterator<QueryResult<R>> {
    try {
      yield* this.inner.streamQuery<R>(q, chunkSize);
    } catch (e) {
      classify(e);
    }
  }
}

const unwrap = (c: DatabaseConnection) => (c instanceof GuardedConnection ? c.inner : c);

class GuardedDriver implements Driver {
  constructor(
    private readonly inner: Driver,
    private readonly begin?: string,
  ) {}
  async init(): Promise<void> {
    await this.inner.init().catch((e) => {
      throw unavailable(e);
    });
  }
  async acquireConnection(): Promise<DatabaseConnection> {
    // nothing but the connection is involved here: every failure means the store is unreachable
    const c = await this.inner.acquireConnection().catch((e) => {
      throw unavailable(e);
    });
    return new GuardedConnection(c);
  }
  async beginTransaction(c: DatabaseConnection, s: TransactionSettings): Promise<void> {
    if (this.begin) {
      await unwrap(c).executeQuery(CompiledQuery.raw(this.begin)).catch(classify);
      return;
    }
    return this.inner.beginTransaction(unwrap(c), s).catch(classify);
  }
  commitTransaction(c: DatabaseConnection): Promise<void> {
    return this.inner.commitTransaction(unwrap(c)).catch(classify);
  }
  rollbackTransaction(c: DatabaseConnection): Promise<void> {
    return this.inner.rollbackTransaction(unwrap(c)).catch(classify);
  }
  async savepoint(c: DatabaseConnection, name: string, compile: QueryCompiler['compileQuery']): Promise<void> {
    if (!this.inner.savepoint) throw new Error('savepoints are not supported by this dialect');
    return this.inner.savepoint(unwrap(c), name, compile).catch(classify);
  }
  async rollbackToSavepoint(c: DatabaseConnection, name: string, compile: QueryCompiler['compileQuery']): Promise<void> {
    if (!this.inner.rollbackToSavepoint) throw new Error('savepoints are not supported by this dialect');
    return this.inner.rollbackToSavepoint(unwrap(c), name, compile).catch(classify);
  }
  async releaseSavepoint(c: DatabaseConnection, name: string, compile: QueryCompiler['compileQuery']): Promise<void> {
    if (!this.inner.releaseSavepoint) throw new Error('savepoints are not supported by this dialect');
    return this.inner.releaseSavepoint(unwrap(c), name, compile).catch(classify);
  }
  releaseConnection(c: DatabaseConnection): Promise<void> {
    return this.inner.releaseConnection(unwrap(c));
  }
  destroy(): Promise<void> {
    return this.inner.destroy();
  }
}

/**
 * A dialect whose connection failures surface as StoreUnavailableError. `begin` replaces the
 * statement that starts a transaction (SQLite: "begin immediate", so that a transaction takes
 * the write lock when it starts, waiting on the busy timeout, instead of failing with
 * SQLITE_BUSY when another process wrote after it read).
 */
export class GuardedDialect implements Dialect {
  constructor(
    private readonly inner: Dialect,
    private readonly begin?: string,
  ) {}
  createDriver(): Driver {
    return new GuardedDriver(this.inner.createDriver(), this.begin);
  }
  createQueryCompiler(): QueryCompiler {
    return this.inner.createQueryCompiler();
  }
  createAdapter(): DialectAdapter {
    return this.inner.createAdapter();
  }
  createIntrospector(db: Kysely<any>): DatabaseIntrospector {
    return this.inner.createIntrospector(db);
  }
}
