/**
 * PostgreSQL with several hosts, libpq style: `postgres://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write`.
 *
 * node-postgres connects to one host. This pool (the `PostgresPool` Kysely's dialect takes)
 * keeps a pg.Pool to the one server that accepts writes — the primary — and finds it again
 * when a connection to it breaks or it stops accepting writes (a failover: the old primary
 * died and a standby was promoted). Finding it means trying each host in turn, as libpq's
 * target_session_attrs=read-write does: connect, and ask the server whether it is in recovery
 * and whether its sessions are read-only.
 *
 * While no host accepts writes, connect() fails with StoreUnavailableError (the API answers
 * 503 with Retry-After); the next attempt searches again, so service resumes by itself as
 * soon as a primary is back. A single host without target_session_attrs is a plain pool.
 */
import { createHash } from 'node:crypto';
import type { PostgresPool, PostgresPoolClient } from 'kysely';
import pg from 'pg';
import { CairnError } from '../util/errors.js';
import { isConnectionFailure, StoreUnavailableError } from './unavailable.js';

export interface PgTarget {
  /** host:port of each server, in the order given */
  hosts: string[];
  /** a single-host connection string for each server (user, password, database, other parameters as given) */
  urls: string[];
  /** connect only to a server that accepts writes (target_session_attrs=read-write or primary, or several hosts) */
  readWrite: boolean;
}

const ATTRS = new Set(['any', 'read-write', 'primary']);

/**
 * Split a PostgreSQL URL with one or more hosts into one URL per host. cairn writes, so with
 * several hosts it always looks for the one accepting writes: target_session_attrs may be
 * read-write or primary (the same for cairn), or left out; other values are refused.
 */
export function parsePgUrl(url: string): PgTarget {
  const m = /^(postgres(?:ql)?:\/\/)(?:([^@/?#]*)@)?([^/?#]*)(.*)$/.exec(url);
  if (!m) throw new CairnError('bad_store', 'a PostgreSQL URL is postgres://[user[:password]@]host[:port][,host[:port]…]/database[?…]');
  const [, scheme, userinfo, hostlist, rest] = m;
  const hosts = hostlist.split(',');
  if (hosts.some((h) => h === '' || !/^(\[[0-9a-fA-F:.]+\]|[^:[\]]+)(:[0-9]{1,5})?$/.test(h))) {
    throw new CairnError('bad_store', `bad host list "${hostlist}" in the store URL: use host[:port],host[:port],…`);
  }
  // target_session_attrs is libpq's, not node-postgres's: take it out of the URL
  let attrs: string | null = null;
  let tail = rest;
  const q = rest.indexOf('?');
  if (q >= 0) {
    const params = new URLSearchParams(rest.slice(q + 1));
    attrs = params.get('target_session_attrs');
    params.delete('target_session_attrs');
    const s = params.toString();
    tail = rest.slice(0, q) + (s ? `?${s}` : '');
  }
  if (attrs !== null && !ATTRS.has(attrs)) {
    throw new CairnError('bad_store', `target_session_attrs=${attrs} is not for cairn, which writes: use read-write (or leave it out)`);
  }
  const withPort = hosts.map((h) => (/(:[0-9]{1,5})$/.test(h) && !/^\[[^\]]*\]$/.test(h) ? h : `${h}:5432`));
  return {
    hosts: withPort,
    urls: hosts.map((h) => `${scheme}${userinfo !== undefined ? `${userinfo}@` : ''}${h}${tail}`),
    readWrite: hosts.length > 1 || attrs === 'read-write' || attrs === 'primary',
  };
}

export interface FailoverPoolOptions {
  max: number;
  connectionTimeoutMillis: number;
  /** told when the pool moves to another server (for the log) */
  onSwitch?: (host: string, previous: string | null) => void;
}

/** How long a search that found no primary is remembered (requests meanwhile fail at once). */
const NEGATIVE_CACHE_MS = 250;
/** How long a probe of one host may take. */
const PROBE_TIMEOUT_MS = 3000;

interface Current {
  index: number;
  pool: pg.Pool;
}

export class FailoverPool implements PostgresPool {
  private current: Current | null = null;
  /** a connection broke or a server refused a write: check the primary before the next connection */
  private suspect = false;
  private search: Promise<Current> | null = null;
  private failedAt = 0;
  private lastFailure: StoreUnavailableError | null = null;
  private ended = false;
  private readonly wrapped = new WeakMap<pg.PoolClient, PostgresPoolClient>();

  constructor(
    readonly target: PgTarget,
    private readonly o: FailoverPoolOptions,
  ) {}

  /** host:port of the server in use, or null while none is known */
  get host(): string | null {
    return this.current ? this.target.hosts[this.current.index] : null;
  }

  async connect(): Promise<PostgresPoolClient> {
    if (this.ended) throw new Error('the pool has been ended');
    for (let attempt = 0; ; attempt++) {
      const cur = await this.primary();
      try {
        return this.wrap(await cur.pool.connect(), cur);
      } catch (e) {
        // the server went away between the search and now: search once more, then give up
        this.markSuspect(cur);
        if (attempt >= 1 || !isConnectionFailure(e)) throw e;
      }
    }
  }

  async end(): Promise<void> {
    this.ended = true;
    const cur = this.current;
    this.current = null;
    if (cur) await cur.pool.end();
  }

  private markSuspect(cur: Current): void {
    if (this.current === cur) this.suspect = true;
  }

  /** The pool of the server accepting writes: the one in use, or found now. */
  private primary(): Promise<Current> {
    if (this.current && !this.suspect) return Promise.resolve(this.current);
    if (!this.search) {
      if (!this.current && this.lastFailure && Date.now() - this.failedAt < NEGATIVE_CACHE_MS) return Promise.reject(this.lastFailure);
      this.search = this.find().finally(() => {
        this.search = null;
      });
    }
    return this.search;
  }

  private async find(): Promise<Current> {
    const n = this.target.urls.length;
    const from = this.current?.index ?? 0;
    const why: string[] = [];
    // without target_session_attrs, a single host is used as it is (no probe)
    if (!this.target.readWrite) return this.use(0);
    for (let k = 0; k < n; k++) {
      const i = (from + k) % n;
      const verdict = await probe(this.target.urls[i]);
      if (verdict === 'primary') return this.use(i);
      why.push(`${this.target.hosts[i]}: ${verdict}`);
    }
    const old = this.current;
    this.current = null;
    this.suspect = false;
    if (old) old.pool.end().catch(() => {});
    this.failedAt = Date.now();
    this.lastFailure = new StoreUnavailableError(`no PostgreSQL server accepts writes (${why.join('; ')})`);
    throw this.lastFailure;
  }

  private use(index: number): Current {
    this.suspect = false;
    this.lastFailure = null;
    if (this.current?.index === index) return this.current;
    const old = this.current;
    const pool = new pg.Pool({ connectionString: this.target.urls[index], max: this.o.max, connectionTimeoutMillis: this.o.connectionTimeoutMillis });
    const cur: Current = { index, pool };
    pool.on('error', () => this.markSuspect(cur)); // an idle client's connection broke
    // a checked-out client between two queries has no error listener of the pool's: without
    // one, a backend killed then would end the process; the failure surfaces on its next query
    pool.on('connect', (client) => client.on('error', () => this.markSuspect(cur)));
    this.current = cur;
    if (this.target.readWrite) this.o.onSwitch?.(this.target.hosts[index], old ? this.target.hosts[old.index] : null);
    // clients still checked out of the old pool finish their work (and fail) first
    if (old) old.pool.end().catch(() => {});
    return cur;
  }

  /** A client whose failed queries tell the pool when the server may no longer be the primary. */
  private wrap(client: pg.PoolClient, cur: Current): PostgresPoolClient {
    let w = this.wrapped.get(client);
    if (w) return w;
    const watch = (e: unknown) => {
      if (isConnectionFailure(e) || isReadOnly(e)) this.markSuspect(cur);
      throw e;
    };
    const named = new Map<string, string | null>();
    const send = client.query as (...a: unknown[]) => unknown;
    let inTransaction = false;
    w = {
      query: ((...args: unknown[]) => {
        if (typeof args[0] === 'string') {
          if (/^\s*(begin|start transaction)\b/i.test(args[0])) inTransaction = true;
          else if (/^\s*(commit|rollback|end)\b/i.test(args[0])) inTransaction = false;
        }
        const sent = preparedArgs(named, args);
        const r = send.apply(client, sent);
        if (!(r instanceof Promise)) return r;
        return r.catch((e: unknown) => {
          if (sent === args || !unprepare(named, args, e)) return watch(e);
          // outside a transaction the statement is sent again, unprepared; inside one, the
          // transaction has failed: its caller is told to retry (503), and the retry runs unprepared
          if (!inTransaction) return (send.apply(client, args) as Promise<unknown>).catch(watch);
          throw new StoreUnavailableError(`a prepared statement no longer matches the store's schema (another replica migrated it); retry: ${(e as Error).message}`, { cause: e });
        });
      }) as PostgresPoolClient['query'],
      release: () => client.release(),
    };
    this.wrapped.set(client, w);
    return w;
  }
}

/** Prepared statements kept per connection (beyond them, a statement is parsed each time). */
const MAX_PREPARED = 200;
/** `CAIRN_PG_PREPARED=off`: no prepared statements (a pooler in transaction mode without prepared-statement support in front of PostgreSQL). */
const PREPARED = process.env.CAIRN_PG_PREPARED !== 'off';

/**
 * A parameterized statement (always one statement) runs as a named prepared statement of its
 * connection: PostgreSQL parses and plans it once per connection instead of each time (a
 * quarter of PostgreSQL's CPU per renewal, docs/performance.md). `named` maps a statement's text
 * to its name on this connection, or to null once it must be sent unprepared.
 */
function preparedArgs(named: Map<string, string | null>, args: unknown[]): unknown[] {
  const [text, values] = args;
  if (!PREPARED || typeof text !== 'string' || !Array.isArray(values) || values.length === 0) return args;
  let name = named.get(text);
  if (name === null) return args;
  if (name === undefined) {
    if (named.size >= MAX_PREPARED) return args;
    name = `cairn_${createHash('sha1').update(text).digest('hex').slice(0, 24)}`;
    named.set(text, name);
  }
  return [{ name, text, values }];
}

/**
 * A prepared statement the server no longer accepts — its table changed under it (a newer
 * replica migrated the schema: "cached plan must not change result type") or it is unknown
 * there (a pooler switched server connections) — is sent unprepared from now on, on this
 * connection. Returns whether that was the error.
 */
function unprepare(named: Map<string, string | null>, args: unknown[], e: unknown): boolean {
  const code = e && typeof e === 'object' ? (e as { code?: unknown }).code : undefined;
  if ((code !== '0A000' && code !== '26000') || typeof args[0] !== 'string' || !named.get(args[0])) return false;
  named.set(args[0], null);
  return true;
}

/** A server that refused a write because it is a standby (or read-only). */
export function isReadOnly(e: unknown): boolean {
  return !!e && typeof e === 'object' && (e as { code?: unknown }).code === '25006';
}

/** Whether a server accepts writes: 'primary', or why not. */
async function probe(url: string): Promise<string> {
  const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: PROBE_TIMEOUT_MS, query_timeout: PROBE_TIMEOUT_MS });
  c.on('error', () => {});
  try {
    await c.connect();
    const r = await c.query<{ recovery: boolean; ro: string }>(`select pg_is_in_recovery() as recovery, current_setting('transaction_read_only') as ro`);
    const row = r.rows[0];
    if (row.recovery) return 'a standby';
    if (row.ro !== 'off') return 'read-only';
    return 'primary';
  } catch (e) {
    const err = e as { code?: string; message?: string };
    return err.code ? `${err.message ?? 'failed'} (${err.code})` : (err.message ?? String(e));
  } finally {
    c.end().catch(() => {});
  }
}
