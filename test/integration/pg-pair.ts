/**
 * A PostgreSQL primary and its streaming standby, made for one test file: two clusters of
 * their own (initdb, pg_basebackup -R) on free loopback ports under a temp directory, run as
 * the `postgres` OS user, and torn down by `destroy()`. The shared server on 5432 is never
 * touched.
 *
 * Replication is synchronous (synchronous_commit = on, synchronous_standby_names names the
 * standby), which is what cairn's "nothing lost in a failover" needs. fsync is off: the tests
 * crash PostgreSQL processes (pg_ctl stop -m immediate), never the machine, and the page
 * cache survives a process crash.
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { freePort } from '../helpers.js';

const BIN = process.env.CAIRN_TEST_PG_BIN ?? findPgBin();

function findPgBin(): string {
  const base = '/usr/lib/postgresql';
  const versions = fs.existsSync(base) ? fs.readdirSync(base).sort((a, b) => Number(b) - Number(a)) : [];
  for (const v of versions) if (fs.existsSync(path.join(base, v, 'bin', 'initdb'))) return path.join(base, v, 'bin');
  throw new Error('no PostgreSQL server binaries under /usr/lib/postgresql (apt-get install postgresql)');
}

/** Run a PostgreSQL program as the postgres OS user (initdb refuses root). */
function asPostgres(prog: string, args: string[], timeoutMs = 60_000): string {
  const asRoot = process.getuid?.() === 0;
  const cmd = asRoot ? 'runuser' : path.join(BIN, prog);
  const argv = asRoot ? ['-u', 'postgres', '--', path.join(BIN, prog), ...args] : args;
  const r = spawnSync(cmd, argv, { encoding: 'utf8', timeout: timeoutMs, cwd: '/' });
  if (r.status !== 0) throw new Error(`${prog} ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr || r.stdout}`);
  return r.stdout;
}

export interface PgServer {
  name: string;
  port: number;
  dir: string;
  host: string;
}

export interface PgPair {
  root: string;
  primary: PgServer;
  standby: PgServer;
  /** the multi-host store URL, standby first (cairn must find the primary wherever it is listed) */
  storeUrl: string;
  /** a single-host URL for the server, database `cairn` */
  url(s: PgServer, db?: string): string;
  /** crash the server (pg_ctl stop -m immediate): no shutdown checkpoint, connections cut */
  crash(s: PgServer): void;
  start(s: PgServer): void;
  /** promote a standby (pg_ctl promote, waits until it accepts writes) */
  promote(s: PgServer): void;
  /** whether the server is running */
  running(s: PgServer): boolean;
  destroy(): void;
}

export async function createPgPair(): Promise<PgPair> {
  const root = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'cairn-pgpair-')));
  fs.chmodSync(root, 0o755);
  if (process.getuid?.() === 0) spawnSync('chown', ['postgres:postgres', root]);
  const primary: PgServer = { name: 'primary', port: await freePort(), dir: path.join(root, 'primary'), host: '127.0.0.1' };
  const standby: PgServer = { name: 'standby', port: await freePort(), dir: path.join(root, 'standby'), host: '127.0.0.1' };
  const ctl = (s: PgServer, ...args: string[]) => asPostgres('pg_ctl', ['-D', s.dir, '-l', path.join(root, `${s.name}.log`), ...args]);
  const pair: PgPair = {
    root,
    primary,
    standby,
    storeUrl: `postgres://postgres@127.0.0.1:${standby.port},127.0.0.1:${primary.port}/cairn?target_session_attrs=read-write`,
    url: (s, db = 'cairn') => `postgres://postgres@127.0.0.1:${s.port}/${db}`,
    crash: (s) => void ctl(s, '-m', 'immediate', 'stop'),
    start: (s) => void ctl(s, '-w', '-t', '60', 'start'),
    promote: (s) => void ctl(s, '-w', '-t', '60', 'promote'),
    running: (s) => spawnSync(path.join(BIN, 'pg_ctl'), ['-D', s.dir, 'status'], { encoding: 'utf8' }).status === 0,
    destroy() {
      for (const s of [primary, standby]) {
        if (fs.existsSync(path.join(s.dir, 'postmaster.pid'))) {
          try {
            ctl(s, '-m', 'immediate', 'stop');
          } catch {
            /* not running */
          }
        }
      }
      if (!process.env.CAIRN_KEEP_TMP) fs.rmSync(root, { recursive: true, force: true });
    },
  };
  try {
    asPostgres('initdb', ['-D', primary.dir, '-U', 'postgres', '--auth=trust', '--no-sync', '-E', 'UTF8', '--locale=C']);
    fs.appendFileSync(
      path.join(primary.dir, 'postgresql.conf'),
      [
        `port = ${primary.port}`,
        `listen_addresses = '127.0.0.1'`,
        `unix_socket_directories = '${root}'`,
        'wal_level = replica',
        'max_wal_senders = 5',
        'max_connections = 100',
        'shared_buffers = 16MB',
        'fsync = off',
        'synchronous_commit = on',
        'wal_sender_timeout = 5s',
        '',
      ].join('\n'),
    );
    pair.start(primary);
    asPostgres('psql', ['-h', root, '-p', String(primary.port), '-U', 'postgres', '-qAtc', 'create database cairn']);
    asPostgres('pg_basebackup', ['-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres', '-D', standby.dir, '-X', 'stream', '-R', '--no-sync', '-c', 'fast']);
    // the standby: its own port; it streams as "standby" (the synchronous one); promoted, it
    // has no standby of its own, so it must not wait for one (the primary's setting comes after the copy)
    fs.appendFileSync(
      path.join(standby.dir, 'postgresql.auto.conf'),
      [
        `port = ${standby.port}`,
        `primary_conninfo = 'host=127.0.0.1 port=${primary.port} user=postgres application_name=standby'`,
        `synchronous_standby_names = ''`,
        'wal_receiver_timeout = 5s',
        '',
      ].join('\n'),
    );
    pair.start(standby);
    // only now that the standby exists do commits wait for it
    await query(pair.url(primary, 'postgres'), `alter system set synchronous_standby_names = 'standby'`);
    await query(pair.url(primary, 'postgres'), 'select pg_reload_conf()');
    await waitFor(async () => {
      const rows = await query(pair.url(primary, 'postgres'), `select sync_state from pg_stat_replication where application_name = 'standby'`);
      return rows[0]?.sync_state === 'sync';
    }, 30_000, 'the standby to stream synchronously');
    return pair;
  } catch (e) {
    pair.destroy();
    throw e;
  }
}

export async function query<T = any>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  c.on('error', () => {});
  await c.connect();
  try {
    return (await c.query(sql, params)).rows as T[];
  } finally {
    await c.end().catch(() => {});
  }
}

export async function waitFor(fn: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < end) {
    try {
      if (await fn()) return;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
}
