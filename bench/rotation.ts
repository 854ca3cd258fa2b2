/**
 * Root CA rotation with many nodes: N simulated nodes (CAIRN_BENCH_ROTATION_NODES, default
 * 10,000) joined to the CA, each then behaving as the agent does during a rotation: a
 * long-poll of `GET /v1/ca?wait=<version>` with its own certificate, and a renewal (a fresh
 * key) when the answer says `node.renew`, sent on the long-poll's connection as the agent's
 * keep-alive client does. Each node's next key and CSR are made before the clock starts (as
 * bench/loadgen does), so that the bench's one thread spends its time on the requests, not on
 * key generation. Timed from `POST /v1/ca/rotate` to the rotation's completion (by itself,
 * once every node converged). Run on one replica over SQLite, and on
 * three replicas over one PostgreSQL database (node i talks to replica i mod 3; needs the
 * local PostgreSQL of test/setup-postgres.sh).
 *
 *  rotation.10k_s          seconds from the rotation's start to its completion (1 replica, SQLite)
 *  rotation.renew_rate     renewals a second during it (the CA's batches: RENEW_RATE a second)
 *  rotation.10k_s_pg3      the same on 3 replicas over PostgreSQL
 *  rotation.renew_rate_pg3
 */
import https from 'node:https';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { createCsr, csrToPem, generateKeyPair, privateKeyToPem } from '../src/pki/index.js';
import { RENEW_RATE } from '../src/authority/rotation.js';
import { addReplica, adminId, api, startCluster } from '../test/integration/cluster.js';
import { createDb } from '../test/integration/pg.js';
import { BenchContext, BenchGroup, Row } from './harness.js';
import { post } from './https.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function csr() {
  const k = generateKeyPair();
  return { key: privateKeyToPem(k.privateKey), csr: csrToPem(createCsr(k.privateKey)) };
}

function getJson(url: string, agent: https.Agent): Promise<{ status: number; body: any }> {
  return new Promise((resolve, reject) => {
    const req = https.get(url, { agent, rejectUnauthorized: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('end', () => {
        try {
          resolve({ status: res.statusCode ?? 0, body: JSON.parse(Buffer.concat(chunks).toString()) });
        } catch (e) {
          reject(e);
        }
      });
    });
    req.on('error', reject);
  });
}

/** Join n simulated nodes through `urls`, rotate the cluster CA, and time it to completion. */
async function rotate(ctx: BenchContext, urls: string[], dir: string, token: string, n: number): Promise<{ seconds: number; renewals: number; errors: number }> {
  const admin = adminId(dir);
  await api(urls[0], 'PATCH', '/v1/config', { renewalIntervalMs: 0 }, admin);
  ctx.log(`rotation: joining ${n} nodes`);
  const nodes: { url: string; key: string; cert: string; agent: https.Agent | null; next: { key: string; csr: string } | null }[] = [];
  let next = 0;
  await Promise.all(
    Array.from({ length: 50 }, async () => {
      while (next < n) {
        const url = urls[next++ % urls.length];
        const k = csr();
        const r = await post(url, '/v1/join', { token, csr: k.csr }, {});
        if (r.status !== 201) throw new Error(`join: ${r.status} ${JSON.stringify(r.body)}`);
        nodes.push({ url, key: k.key, cert: r.body.certificate, agent: null, next: csr() });
      }
    }),
  );
  let stopping = false;
  let renewals = 0;
  let errors = 0;
  // every node: a long-poll, a renewal when asked (as the agent's watch does)
  const nodeLoop = async (node: (typeof nodes)[number], version: string) => {
    let v = version;
    while (!stopping) {
      node.agent ??= new https.Agent({ keepAlive: true, maxSockets: 1, key: node.key, cert: node.cert });
      try {
        const a = await getJson(`${node.url}/v1/ca?wait=${v}`, node.agent);
        if (a.status !== 200) throw new Error(String(a.status));
        v = a.body.version;
        if (a.body.node?.renew) {
          const k = node.next ?? csr(); // a second renewal in one rotation (rare) makes its key here
          node.next = null;
          const r = await post(node.url, '/v1/renew', { csr: k.csr }, { agent: node.agent });
          if (r.status !== 200) throw new Error(`renew ${r.status}`);
          node.agent.destroy();
          Object.assign(node, { key: k.key, cert: r.body.certificate, agent: null });
          renewals++;
        }
      } catch {
        if (stopping) return; // its connection was closed at the end
        errors++;
        await sleep(1000);
      }
    }
  };
  const version = (await api(urls[0], 'GET', '/v1/ca')).body.version as string;
  const loops = nodes.map((node) => nodeLoop(node, version));
  await sleep(2000); // the long-polls are open
  ctx.log('rotation: rotating');
  const t0 = performance.now();
  const r = await api(urls[0], 'POST', '/v1/ca/rotate', {}, admin);
  if (r.status !== 202) throw new Error(`rotate: ${r.status} ${JSON.stringify(r.body)}`);
  let seconds = 0;
  for (;;) {
    await sleep(1000);
    // the state directory's admin certificate is re-issued by the new key: read it each time
    const s = (await api(urls[0], 'GET', '/v1/ca/rotation', undefined, adminId(dir)).catch(() => null))?.body;
    if (s?.rotation?.state === 'completed') {
      seconds = (performance.now() - t0) / 1000;
      break;
    }
    if ((performance.now() - t0) / 1000 > 600) throw new Error(`no completion within 600 s: ${JSON.stringify(s?.rotation?.nodes)}`);
  }
  stopping = true;
  for (const node of nodes) node.agent?.destroy();
  await Promise.race([Promise.all(loops), sleep(30_000)]);
  return { seconds, renewals, errors };
}

const rows = (suffix: string, where: string, n: number, m: { seconds: number; renewals: number; errors: number }): Row[] => [
  { name: `rotation.10k_s${suffix}`, value: Math.round(m.seconds * 10) / 10, unit: 's', note: `${n} nodes, ${where}, the CA asks ${RENEW_RATE} renewals/s; ${m.errors} failed requests retried; goal < 60` },
  { name: `rotation.renew_rate${suffix}`, value: Math.round(m.renewals / m.seconds), unit: 'renewals/s', note: `${m.renewals} renewals` },
];

const nodeCount = () => Number(process.env.CAIRN_BENCH_ROTATION_NODES ?? 10_000);

async function runSqlite(ctx: BenchContext): Promise<Row[]> {
  const n = nodeCount();
  const c = await startCluster('bench-rotation');
  try {
    return rows('', '1 replica (SQLite, default workers)', n, await rotate(ctx, [c.url], c.dir, c.tokens.worker, n));
  } finally {
    await c.cleanup();
  }
}

async function runPg3(ctx: BenchContext): Promise<Row[]> {
  const n = nodeCount();
  const db = await createDb();
  // CAIRN_BENCH_ROTATION_WORKERS: `serve --workers` of each replica (default: one per core each)
  const w = process.env.CAIRN_BENCH_ROTATION_WORKERS;
  const serveArgs = w ? ['--workers', w] : [];
  const a = await startCluster('bench-rotation', { store: db.url, serveArgs });
  const more: Awaited<ReturnType<typeof addReplica>>[] = [];
  try {
    for (let i = 0; i < 2; i++) more.push(await addReplica(db.url, path.join(a.dir, 'unlock.key'), serveArgs));
    return rows('_pg3', `3 replicas on one PostgreSQL (${w ? `--workers ${w}` : 'default workers'} each)`, n, await rotate(ctx, [a.url, ...more.map((m) => m.url)], a.dir, a.tokens.worker, n));
  } finally {
    for (const m of more) await m.cleanup();
    await a.cleanup();
    await db.drop();
  }
}

const group: BenchGroup = {
  name: 'rotation',
  benches: [
    { name: 'rotation.10k_s', description: 'root CA rotation of 10,000 simulated nodes on one replica over SQLite: start to completion', produces: ['rotation.renew_rate'], run: runSqlite },
    { name: 'rotation.10k_s_pg3', description: 'the same on 3 replicas over one PostgreSQL database', produces: ['rotation.renew_rate_pg3'], run: runPg3 },
  ],
};
export default group;
