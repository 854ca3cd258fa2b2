/**
 * PostgreSQL for the HA tests: a real server (started by .ci/run, or already running here),
 * a fresh database per test. CAIRN_TEST_PG overrides the admin connection URL.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';

export const PG_ADMIN_URL = process.env.CAIRN_TEST_PG ?? 'postgres://cairn:cairn@127.0.0.1:5432/postgres';

async function adminQuery(sql: string): Promise<void> {
  const client = new pg.Client({ connectionString: PG_ADMIN_URL, connectionTimeoutMillis: 5000 });
  try {
    await client.connect();
  } catch (e) {
    throw new Error(`PostgreSQL is not reachable at ${PG_ADMIN_URL} (${(e as Error).message}); run .ci/run or test/setup-postgres.sh, or set CAIRN_TEST_PG`);
  }
  try {
    await client.query(sql);
  } finally {
    await client.end();
  }
}

export interface TestDb {
  url: string;
  drop(): Promise<void>;
}

export async function createDb(): Promise<TestDb> {
  const name = `cairn_t_${randomBytes(6).toString('hex')}`;
  await adminQuery(`CREATE DATABASE ${name}`);
  const u = new URL(PG_ADMIN_URL);
  u.pathname = `/${name}`;
  return {
    url: u.toString(),
    async drop() {
      await adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
    },
  };
}

export async function pgQuery<T = any>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query(sql, params)).rows as T[];
  } finally {
    await client.end();
  }
}
