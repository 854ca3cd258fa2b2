/**
 * High availability on PostgreSQL (needs the local PostgreSQL of test/setup-postgres.sh).
 *
 *  ha.issue_1r        issuances (joins) per second through one replica on PostgreSQL
 *  ha.issue_3r        the same spread over three replicas on one PostgreSQL database
 *  ha.issue_sqlite    the same through one replica on SQLite (the goal's baseline)
 *  ha.range_claim_ms  median time to claim a serial range, 3 claimers at once on one row
 *  crl.build_100k_ms  build and sign a CRL of 100,000 revoked certificates
 *  renew.pg.w1        renewals through one replica on PostgreSQL (Go load generator, new
 *                     connection each), with .cpu_ms (server) and .pg_cpu_ms (PostgreSQL's
 *                     backends) per renewal
 *
 * Issuance here uses keep-alive connections (50 clients), so the figure is the CA's
 * issuance rate rather than TLS handshakes (join.https measures those).
 */
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { buildCrl, makeSerial } from '../src/pki/index.js';
import { openStore } from '../src/store/store.js';
import { addReplica, adminId, ServeProcess, startCluster } from '../test/integration/cluster.js';
import { createDb, pgQuery } from '../test/integration/pg.js';
import { buildLoadgen, LoadResult, runLoadgen, tempDir } from './procs.js';
import { fixtures } from './fixtures.js';
import { BenchContext, BenchGroup, Row } from './harness.js';
import { CONCURRENCY, csrPool, load, post } from './https.js';

async function issueRate(urls: string[], token: string, seconds: number, warmup: number) {
  const pool = csrPool(100);
  const agents = urls.map(() => new https.Agent({ keepAlive: true, maxSockets: CONCURRENCY, rejectUnauthorized: false }));
  const op = async (w: number, i: number) => {
    const k = w % urls.length;
    const r = await post(urls[k], '/v1/join', { token, csr: pool[i % pool.length].csr }, { agent: agents[k] });
    if (r.status !== 201) throw new Error(`join: ${r.status} ${JSON.stringify(r.body)}`);
  };
  await load(warmup, CONCURRENCY, op);
  const res = await load(seconds, CONCURRENCY, op);
  agents.forEach((a) => a.destroy());
  return res;
}

async function runIssue(ctx: BenchContext): Promise<Row[]> {
  const seconds = Math.max(3, ctx.seconds * 2);
  const rows: Row[] = [];
  const sqlite = await startCluster('bench');
  try {
    ctx.log('ha.issue_sqlite');
    const r = await issueRate([sqlite.url], sqlite.tokens.worker, seconds, ctx.warmupSeconds);
    rows.push({ name: 'ha.issue_sqlite', value: Math.round(r.perSecond), unit: 'issues/s', note: `1 replica, SQLite, p99 ${r.p99.toFixed(1)} ms` });
  } finally {
    await sqlite.cleanup();
  }
  const db = await createDb();
  const a = await startCluster('bench', { store: db.url });
  const more: Awaited<ReturnType<typeof addReplica>>[] = [];
  try {
    ctx.log('ha.issue_1r');
    const one = await issueRate([a.url], a.tokens.worker, seconds, ctx.warmupSeconds);
    rows.push({ name: 'ha.issue_1r', value: Math.round(one.perSecond), unit: 'issues/s', note: `1 replica, PostgreSQL, p99 ${one.p99.toFixed(1)} ms` });
    for (let i = 0; i < 2; i++) more.push(await addReplica(db.url, path.join(a.dir, 'unlock.key')));
    ctx.log('ha.issue_3r');
    const three = await issueRate([a.url, ...more.map((m) => m.url)], a.tokens.worker, seconds, ctx.warmupSeconds);
    rows.push({ name: 'ha.issue_3r', value: Math.round(three.perSecond), unit: 'issues/s', baseline: 'ha.issue_sqlite', note: `3 replicas, one PostgreSQL, p99 ${three.p99.toFixed(1)} ms; goal ≥ ha.issue_sqlite` });
  } finally {
    for (const m of more) await m.cleanup();
    await a.cleanup();
  }
  // range claims under contention: three stores (three pools) claim on the same row at once
  const stores = await Promise.all([0, 1, 2].map(() => openStore('postgres', db.url)));
  try {
    await stores[0].ensureSequence('bench', 1);
    const times: number[] = [];
    const end = performance.now() + ctx.seconds * 1000;
    await Promise.all(
      stores.map(async (s) => {
        while (performance.now() < end) {
          const t = performance.now();
          await s.claimRange('bench', 1000);
          times.push(performance.now() - t);
        }
      }),
    );
    times.sort((x, y) => x - y);
    rows.push({ name: 'ha.range_claim_ms', value: Math.round(times[Math.floor(times.length / 2)] * 1000) / 1000, unit: 'ms', note: `median of ${times.length} claims, 3 claimers on one row` });
  } finally {
    for (const s of stores) await s.close();
    await db.drop();
  }
  return rows;
}

async function runCrl(ctx: BenchContext): Promise<Row[]> {
  const f = fixtures();
  const revoked = Array.from({ length: 100_000 }, (_, i) => ({ serial: makeSerial(BigInt(i + 1)), revokedAt: new Date(), reason: i % 3 ? ('keyCompromise' as const) : undefined }));
  const times: number[] = [];
  const end = performance.now() + ctx.seconds * 1000;
  do {
    const t = performance.now();
    buildCrl({ issuer: f.issuer, number: BigInt(times.length + 1), thisUpdate: new Date(), nextUpdate: new Date(Date.now() + 86_400_000), revoked });
    times.push(performance.now() - t);
  } while (performance.now() < end || times.length < 3);
  times.sort((x, y) => x - y);
  return [{ name: 'crl.build_100k_ms', value: Math.round(times[Math.floor(times.length / 2)]), unit: 'ms', note: `median of ${times.length}; goal < 2000` }];
}

/**
 * Renewals through one replica (`serve --workers 1`) on PostgreSQL, driven by the Go load
 * generator (new mutual-TLS connection each): server CPU and PostgreSQL's CPU (every backend,
 * from /proc under the postmaster) per renewal, 3 rounds.
 */
async function runRenewPg(ctx: BenchContext): Promise<Row[]> {
  const tmp = tempDir('cairn-bench-pg-');
  const db = await createDb();
  const c = await startCluster('bench-pg', { store: db.url });
  let server: ServeProcess | undefined;
  try {
    const loadgen = buildLoadgen(tmp);
    await c.kill('SIGTERM');
    server = new ServeProcess(c.dir, {}, ['--workers', '1']);
    await server.start();
    const admin = adminId(c.dir);
    const r = await post(c.url, '/v1/config', { renewalIntervalMs: 0 }, { method: 'PATCH', agent: false, key: admin.key, cert: admin.cert });
    if (r.status !== 200) throw new Error(`config: ${r.status} ${JSON.stringify(r.body)}`);
    const [{ pid }] = await pgQuery<{ pid: number }>(db.url, 'select pg_backend_pid() as pid');
    const postmaster = Number(fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ')[1]);
    const seconds = String(Math.max(3, ctx.seconds * 2));
    const rs: LoadResult[] = [];
    for (let i = 0; i < 3; i++) rs.push(await runLoadgen(loadgen, ['-url', c.url, '-mode', 'renew', '-c', '50', '-seconds', seconds, '-warmup', String(Math.max(1, ctx.warmupSeconds)), '-token', c.tokens.worker], server.proc!.pid!, undefined, postmaster));
    const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[1];
    const span = (xs: number[], d: number) => `${Math.min(...xs).toFixed(d)}–${Math.max(...xs).toFixed(d)}`;
    const rate = rs.map((x) => x.rate);
    const cpu = rs.map((x) => x.cpuPerOp);
    const pgc = rs.map((x) => x.alsoPerOp!);
    return [
      { name: 'renew.pg.w1', value: Math.round(med(rate)), unit: 'renewals/s', note: `${span(rate, 0)}; one replica, serve --workers 1, PostgreSQL, new mTLS connection each` },
      { name: 'renew.pg.w1.cpu_ms', value: Math.round(med(cpu) * 1000) / 1000, unit: 'ms/op', note: `server CPU per renewal, ${span(cpu, 3)}` },
      { name: 'renew.pg.w1.pg_cpu_ms', value: Math.round(med(pgc) * 1000) / 1000, unit: 'ms/op', note: `PostgreSQL's CPU per renewal (every backend), ${span(pgc, 3)}` },
    ];
  } finally {
    await server?.kill('SIGTERM');
    await c.cleanup();
    await db.drop();
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}

const group: BenchGroup = {
  name: 'ha',
  benches: [
    { name: 'ha.issue', description: 'issuance through 1 and 3 replicas on PostgreSQL, and 1 on SQLite; range claims', run: runIssue },
    { name: 'crl.build_100k_ms', description: 'build and sign a 100,000-entry CRL', run: runCrl },
    { name: 'renew.pg.w1', description: 'renewals through one replica on PostgreSQL: server and PostgreSQL CPU per renewal', produces: ['renew.pg'], run: runRenewPg },
  ],
};
export default group;
