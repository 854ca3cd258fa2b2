/**
 * High availability on PostgreSQL (needs the local PostgreSQL of test/setup-postgres.sh).
 *
 *  ha.issue_1r        issuances (joins) per second through one replica on PostgreSQL
 *  ha.issue_3r        the same spread over three replicas on one PostgreSQL database
 *  ha.issue_sqlite    the same through one replica on SQLite (the goal's baseline)
 *  ha.range_claim_ms  median time to claim a serial range, 3 claimers at once on one row
 *  crl.build_100k_ms  build and sign a CRL of 100,000 revoked certificates
 *
 * Issuance here uses keep-alive connections (50 clients), so the figure is the CA's
 * issuance rate rather than TLS handshakes (join.https measures those).
 */
import https from 'node:https';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { buildCrl, makeSerial } from '../src/pki/index.js';
import { openStore } from '../src/store/store.js';
import { addReplica, startCluster } from '../test/integration/cluster.js';
import { createDb } from '../test/integration/pg.js';
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

const group: BenchGroup = {
  name: 'ha',
  benches: [
    { name: 'ha.issue', description: 'issuance through 1 and 3 replicas on PostgreSQL, and 1 on SQLite; range claims', run: runIssue },
    { name: 'crl.build_100k_ms', description: 'build and sign a 100,000-entry CRL', run: runCrl },
  ],
};
export default group;
